"""Config loading: every shipped config loads, sizes resolve, and mistakes give clear errors."""

import ast
import dataclasses
import importlib
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from bertjax import config, domains, glue_tasks, prepare, train
from bertjax.domains import check_domains
from bertjax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = config.load([path])
    assert cfg.model.hidden_size % cfg.model.num_heads == 0


def test_one_file_or_one_override_may_be_given_alone():
    # A notebook's first call, load("configs/tiny.yaml"), said "config file c does not exist":
    # the string was read one character per file (and an override's, one per override).
    alone = config.load(ROOT / "configs" / "tiny.yaml", "train.steps=5")
    assert alone == config.load([ROOT / "configs" / "tiny.yaml"], ["train.steps=5"])
    assert config.load(str(ROOT / "configs" / "tiny.yaml")).model.size == "tiny"


def test_named_size_sets_dims_and_each_dim_is_overridable():
    base = config.load([], ["model.size=base"]).model
    assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size) == (
        12, 768, 12, 3072)
    deep = config.load([], ["model.size=base", "model.num_layers=24"]).model
    assert (deep.num_layers, deep.hidden_size) == (24, 768)


def test_yaml_then_overrides_in_order(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("model:\n  size: mini\ntrain:\n  steps: 7\n")
    b = tmp_path / "b.yaml"
    b.write_text("train:\n  steps: 9\n")
    cfg = config.load([a, b], ["optim.lr=0.5"])
    assert (cfg.model.hidden_size, cfg.train.steps, cfg.optim.lr) == (256, 9, 0.5)


def test_resolved_yaml_round_trips():
    cfg = config.load([], ["model.size=small", "glue.seeds=[1,2]"])
    assert config.from_yaml_text(config.to_yaml(cfg), "test") == cfg
    # a literal "${" (escaped in the override): its run's config.yaml did not read back
    # ("interpolation key 'b' not found"), so the run could not resume
    cfg = config.load([], ["wandb.name=a\\${b}", "wandb.project=\\${x}"])
    assert (cfg.wandb.name, cfg.wandb.project) == ("a${b}", "${x}")
    assert config.from_yaml_text(config.to_yaml(cfg), "test") == cfg


def test_unknown_key_names_key_file_and_closest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hiden_size: 64\n")
    with pytest.raises(UserError, match=r"'model.hiden_size' in .*bad.yaml.*'model.hidden_size'"):
        config.load([bad])


def test_wrong_type_names_key_expected_type_and_value():
    with pytest.raises(UserError, match=r"'train.steps' .* expects int .* got 'ten'"):
        config.load([], ["train.steps=ten"])


@pytest.mark.parametrize("override, fragment", [
    ("model.num_heads=5", "not divisible"),
    ("model.norm=middle", "model.norm"),
    ("model.position_init=rotary", "model.position_init"),
    ("model.size=huge", "model.size"),
    ("optim.schedule=cosine", "optim.schedule"),
    ("wandb.mode=sometimes", "wandb.mode"),
    ("train.batch_end=40", "multiple of"),
    ("data.max_predictions=200", "exceeds data.seq_len=128"),
])
def test_cross_field_validation(override, fragment):
    with pytest.raises(UserError, match=fragment):
        config.load([], [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        config.load([tmp_path / "nope.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        config.load([broken])


def test_a_config_file_not_in_utf8_is_named_with_the_fix(tmp_path):
    """UTF-16 (a Windows editor's "Unicode") and Latin-1 were "not valid YAML (UnicodeDecodeError:
    'utf-8' codec can't decode byte 0xff in position 0 ...)", with no fix."""
    text = "train:\n  steps: 3\n  run_dir: caf\u00e9\n"
    (tmp_path / "u16.yaml").write_bytes(text.encode("utf-16"))
    with pytest.raises(UserError, match=r"u16.yaml is UTF-16 text; save config files as UTF-8: "
                                        r"convert it, e.g. iconv -f utf-16 -t utf-8 "):
        config.load([tmp_path / "u16.yaml"])
    (tmp_path / "latin.yaml").write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.yaml line 3: not valid UTF-8 \(byte 0xe9 at "
                                        r"column 15, .*\); save config files as UTF-8"):
        config.load([tmp_path / "latin.yaml"])
    (tmp_path / "crlf.yaml").write_bytes(("\ufeff" + text).replace("\n", "\r\n").encode())
    assert config.load([tmp_path / "crlf.yaml"]).train.run_dir == "caf\u00e9"  # BOM, CRLF: fine


@pytest.mark.slow
def test_cli_bad_key_is_one_line_exit_2():
    out = subprocess.run(
        [sys.executable, "-m", "bertjax.train", "configs/demo.yaml", "model.hiden_size=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "model.hidden_size" in out.stderr and "Traceback" not in out.stderr


def test_include_merges_the_base_first(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  steps: 5\n  seed: 3\n")
    (tmp_path / "task.yaml").write_text("include: base.yaml\ntrain:\n  steps: 8\n")
    cfg = config.load([tmp_path / "task.yaml"])
    assert (cfg.train.steps, cfg.train.seed) == (8, 3)
    (tmp_path / "loop.yaml").write_text("include: loop.yaml\n")
    with pytest.raises(UserError, match="includes itself"):
        config.load([tmp_path / "loop.yaml"])


def config_reads(package: Path) -> set[str]:
    """`section.key` for every config attribute the code reads: `x.field` where x is written
    `...cfg`, `...config` or `....section` (cfg.train.steps, data_cfg.mask_rate, self.cfg.glue.
    task), plus field names spelled out as strings (getattr over a tuple of names)."""
    attrs, strings = set(), set()
    for path in package.glob("*.py"):
        if path.name in CONFIG_FILES:  # declaring or validating a key is not using it
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                attrs.add((ast.unparse(node.value).rpartition(".")[2], node.attr))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
    reads = set()
    for section in dataclasses.fields(config.Config):
        for f in dataclasses.fields(section.type):
            if f.name in strings or any(owner in (section.name, "cfg", "config") or
                                        owner.endswith("_cfg") for owner, attr in attrs
                                        if attr == f.name):
                reads.add(f"{section.name}.{f.name}")
    return reads


CONFIG_FILES = ("config.py", "config_schema.py")
# Keys the code reads through a property of their section in config_schema.py.
THROUGH_A_PROPERTY = {"data.max_predictions": "data.predictions"}


def test_every_config_key_is_read_somewhere():
    every = {f"{s.name}.{f.name}" for s in dataclasses.fields(config.Config)
             for f in dataclasses.fields(s.type)}
    reads = config_reads(ROOT / "bertjax")
    text = "\n".join(p.read_text() for p in (ROOT / "bertjax").glob("*.py")
                     if p.name not in CONFIG_FILES)
    reads |= {key for key, prop in THROUGH_A_PROPERTY.items()
              if f".{prop.partition('.')[2]}" in text}
    assert every - reads == set()


def test_a_key_nothing_reads_is_caught(tmp_path):
    for path in (ROOT / "bertjax").glob("*.py"):
        text = path.read_text()
        if path.name == "pretrain_loop.py":  # drop the one read of train.max_nonfinite
            assert "self.cfg.train.max_nonfinite" in text
            text = text.replace("self.cfg.train.max_nonfinite", "10")
        (tmp_path / path.name).write_text(text)
    assert "train.max_nonfinite" not in config_reads(tmp_path)


def test_a_removed_key_says_why(tmp_path):
    with pytest.raises(UserError, match="precision.param' .* was removed .* always float32"):
        config.load([], ["precision.param=bfloat16"])
    old = config.to_yaml(config.load([])).replace("precision:\n", "precision:\n  param: float32\n")
    assert config.from_yaml_text(old, "an old run's config.yaml") == config.load([])
    with pytest.raises(UserError, match="eval_batches' .* removed .* set train.eval_sequences to "
                                        "eval_batches x micro_batch"):
        config.load([], ["train.eval_batches=4"])
    old = config.to_yaml(config.load([])).replace("train:\n", "train:\n  eval_batches: 8\n")
    assert config.from_yaml_text(old, "an old run's config.yaml") == config.load([])
    # An older bertjax's config.yaml has eval_batches where eval_sequences is now: it is read
    # as the sample that run scored (eval_batches x micro_batch), not as the default 256.
    tiny = config.load([], ["train.micro_batch=8", "train.eval_sequences=32"])
    written = yaml.safe_load(config.to_yaml(tiny))
    written["train"]["eval_batches"] = written["train"].pop("eval_sequences") // 8
    assert config.from_yaml_text(yaml.safe_dump(written), "an old run's config.yaml") == tiny


# ---- domains (issue 19): every numeric and list key declares what it may be, checked at load ----
def test_every_numeric_and_list_key_declares_a_domain_its_default_satisfies():
    for section in dataclasses.fields(config.Config):
        for f in dataclasses.fields(section.type):
            key, kinds = f"{section.name}.{f.name}", typing.get_args(f.type) or (f.type,)
            numeric = any(k in (int, float) for k in kinds)
            if numeric or typing.get_origin(f.type) is list:
                assert f.metadata["domain"] is not None, key
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
                else f.default
            if f.metadata["domain"] is not None and default is not None:
                assert f.metadata["domain"].test(default), key


@pytest.mark.parametrize("override, says", [
    ("train.steps=-5", "it must be > 0"), ("optim.lr=-1", "it must be > 0"),
    ("train.tokens=-100", "it must be > 0"), ("optim.b2=1.5", "in [0, 1)"),
    ("train.micro_batch=0", "> 0"), ("model.num_heads=0", "> 0"), ("model.num_layers=0", "> 0"),
    ("train.log_every=0", "> 0"), ("glue.buckets=[]", "non-empty"),
    ("glue.buckets=[64,32]", "strictly increasing"), ("glue.buckets=[4,64]", ">= 8"),
    ("glue.seeds=[]", "non-empty"), ("glue.seeds=[-1]", ">= 0"), ("glue.epochs=-1", "> 0"),
    ("glue.seeds=[0,1,0]", "repeat-free"),  # a seed twice would count its result twice
    ("glue.max_train_examples=0", "> 0"), ("train.seed=-3", ">= 0"),
    ("data.mask_rate=1.0", "in (0, 1)"), ("model.dropout=1.0", "in [0, 1)"),
    ("optim.final_lr_fraction=2", "in [0, 1]"), ("data.prefetch=0", "> 0"),
    ("train.fill_mask=[no mask here]", "containing [MASK]"), ("glue.task=ax", "one of cola"),
    ("train.profile=[3,2]", "1 <= FIRST <= LAST"), ("train.profile=[0]", "1 <= FIRST"),
    ("train.profile=[1,2,3]", "[], [STEP] or [FIRST, LAST]"),
    ("tokenizer.vocab_size=10", ">= 100"), ("mesh.num_processes=0", "> 0"),
    # below 1 a loss under the running mean rolled back: no step was applied, exit 0
    ("train.rollback_spike=0.5", "0 (no spike test) or > 1"),
    ("train.rollback_spike=1", "0 (no spike test) or > 1"),
])
def test_an_impossible_value_names_key_value_domain_and_fix(override, says):
    key, _, value = override.partition("=")
    with pytest.raises(UserError, match=r"^(?P<k>[\w.]+)=\S.* is invalid: it must be ") as e:
        config.load([], [override])
    message = str(e.value)
    assert message.startswith(f"{key}=") and says in message and "\n" not in message
    assert f"e.g. {key}=" in message or f"set {key} to a value" in message  # the fix


def test_a_batch_that_is_no_multiple_of_the_micro_batch_names_the_key_that_was_set():
    with pytest.raises(UserError, match=r"^train.batch_end=8 must be a multiple of "
                                        r"train.micro_batch=16$"):
        config.load([], ["train.micro_batch=16", "train.batch_end=8"])
    with pytest.raises(UserError, match=r"^train.batch_start=24 must be a multiple"):
        config.load([], ["train.micro_batch=16", "train.batch_start=24", "train.batch_end=32"])


def test_a_ramp_that_would_shrink_the_batch_is_refused():
    # batch_start above batch_end ran as a shrinking batch, though the ramp is documented to grow
    # it: most likely the two values swapped.
    with pytest.raises(UserError, match=r"train.batch_start=16 is above train.batch_end=8: .*swap"):
        config.load([], ["train.micro_batch=8", "train.batch_start=16", "train.batch_end=8"])
    config.load([], ["train.micro_batch=8", "train.batch_start=16", "train.batch_end=16"])


def test_domains_hold_for_every_way_a_config_is_built():
    with pytest.raises(UserError, match=r"model\.num_layers=0 is invalid"):
        config.ModelConfig(num_layers=0)  # direct construction (hf.py) is checked too
    odd = config.ModelConfig()  # a wrong type (bertjax's tests type-check constructors, so set)
    object.__setattr__(odd, "num_layers", "2")
    with pytest.raises(UserError, match=r"model\.num_layers='2' is not int \| None"):
        check_domains(odd)
    with pytest.raises(UserError, match=r"optim\.lr=0\.0 is invalid"):
        dataclasses.replace(config.load([]).optim, lr=0.0)
    bad = config.to_yaml(config.load([])).replace("  steps: 1000", "  steps: -1")
    with pytest.raises(UserError, match=r"train\.steps=-1 is invalid"):
        config.from_yaml_text(bad, "a run's config.yaml")
    with pytest.raises(UserError, match="a run's config.yaml is not valid YAML"):
        config.from_yaml_text("model: [", "a run's config.yaml")
    assert config.load([], ["model.num_layers=null"]).model.num_layers == 2  # null: from size


def test_cross_field_checks_stay_in_post_init():
    with pytest.raises(UserError, match="not divisible"):
        config.load([], ["model.num_heads=3"])
    with pytest.raises(UserError, match=r"mesh\.process_id=2 must be below mesh\.num_processes"):
        config.load([], ["mesh.num_processes=2", "mesh.process_id=2"])


def test_domain_vocabulary():
    assert domains.interval(0, 1, "()").test(0.5) and not domains.interval(0, 1, "()").test(0)
    assert domains.interval(0, 1, "[]").test(1) and not domains.FRACTION.test(1)
    increasing = domains.list_of(domains.at_least(8), non_empty=True, increasing=True)
    assert increasing.test([8, 16]) and not increasing.test([16, 8]) and not increasing.test([])
    assert increasing.says == "a non-empty, strictly increasing list of values >= 8"
    distinct = domains.list_of(unique=True)
    assert distinct.test([2, 0, 1]) and distinct.test([]) and not distinct.test([1, 2, 1])
    assert distinct.says == "a repeat-free list" and domains.list_of().says == "a list"
    assert set(config.GLUE_TASKS) <= set(glue_tasks.TASKS)


@pytest.mark.parametrize("text, fragment", [
    ("model: tiny\n", "'model' in .* is tiny, but it is a section: a mapping of keys"),
    ("model: [1, 2]\n", "'model' in .* is \\[1, 2\\], but it is a section"),
    ("include: 5\n", "include: in .* must be a YAML file path or a list of them.*got 5"),
    ("include: [base.yaml, 3]\n", "include: .* got \\['base.yaml', 3\\]"),
])
def test_a_wrong_shape_in_yaml_says_what_was_expected(tmp_path, text, fragment):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(UserError, match=fragment):
        config.load([tmp_path / "bad.yaml"])


def test_weak_messages_are_specific(tmp_path):
    with pytest.raises(UserError, match="override '=5' is not section.key=value"):
        config.load([], ["=5"])
    with pytest.raises(UserError, match="'model' in override 'model=5' is 5, but it is a section"):
        config.load([], ["model=5"])
    with pytest.raises(UserError, match=f"config file {tmp_path} is a directory"):
        config.load([tmp_path])
    with pytest.raises(UserError, match=r"'glue\.seeds\[0\]' .* expects items of list\[int\]"):
        config.load([], ["glue.seeds=[a]"])
    # was "unknown config key 'include' ...; did you mean 'glue'?"
    with pytest.raises(UserError, match=r"^override 'include=base.yaml': include: works inside a "
                                        r"YAML file; pass base.yaml as another config file"):
        config.load([], ["include=base.yaml"])


# ---- bad input found by the probe: every mistake is one line naming it and the fix ----
@pytest.mark.parametrize("override, fragment", [
    ("train.steps=${", r"override 'train.steps=\$\{': train.steps holds a malformed interpolation"),
    ("train.run_dir=${oc.env:HOME", r"train.run_dir holds a malformed interpolation .*closing"),
    ("train.steps=[1", r"override 'train.steps=\[1' does not parse as YAML: did not find "
                       r"expected ',' or '\]' .*close its brackets"),
])
def test_an_override_that_does_not_parse_is_named(override, fragment):
    with pytest.raises(UserError, match=fragment):
        config.load([], [override])


@pytest.mark.parametrize("override, fragment", [
    ("train.steps=${oops}", r"^train.steps=\$\{oops\}: interpolation key 'oops' not found; "
                            r"refer to an existing key"),
    ("data.dir=${oc.env:NOPE_XYZ}", r"^data.dir=\$\{oc.env:NOPE_XYZ\}: environment variable "
                                    r"'NOPE_XYZ' not found; .*\$\{oc.env:VAR,default\}"),
    ("train.run_dir=${foo:bar}", r"^train.run_dir=\$\{foo:bar\}: unsupported interpolation type"),
    ("data.dir=${data.dir}", r"^data.dir=\$\{data.dir\}: recursive interpolation"),
    ("glue.seeds=[0,'${oops}']", r"^glue.seeds\[1\]=\$\{oops\}: interpolation key 'oops'"),
])
def test_an_interpolation_that_does_not_resolve_names_key_and_fix(override, fragment):
    with pytest.raises(UserError, match=fragment) as e:
        config.load([], [override])
    assert "reference_type" not in str(e.value) and "\n" not in str(e.value)
    assert config.load([], ["data.dir=${train.run_dir}"]).data.dir == "runs/demo"  # still works


@pytest.mark.parametrize("text, fragment", [
    ("model:\n  size: [tiny\n", r"line 3, column 1: .*expected ',' or '\]'.* \(while parsing a "
                                r"flow sequence started at line 2, column 9\)"),
    ("model:\n\tsize: tiny\n", r"line 2, column 1 \('\\tsize: tiny'\): found character .*; "
                               "indent with spaces, not tabs"),
    ("train:\n  steps: 100\t# trial\n", r"line 2, column 13 .*; replace the tab with spaces$"),
    ("model:\n  size: tiny\nmodel:\n  size: mini\n",
     r"line 3, column 1 \('model:'\): found duplicate key model"),
    ("hello\n", "must hold a mapping of sections .*, not the value 'hello'"),
    ("train:\n  steps: ${\n", r"train.steps holds a malformed interpolation"),
])
def test_a_yaml_mistake_says_where_and_what(tmp_path, text, fragment):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(UserError, match=fragment):
        config.load([tmp_path / "bad.yaml"])


def test_one_value_where_a_list_belongs_shows_the_bracket_form():
    with pytest.raises(UserError, match=r"expects list\[str\].*e\.g\. data\.sources=\[foo\.txt\]"):
        config.load([], ["data.sources=foo.txt"])
    # a tuple's parentheses become the brackets (the hint was glue.seeds=[(0,1)], itself wrong)
    for tuple_ in ("(0,1)", "(0 1)", "(0, 1)"):  # the last two hinted [0 1] ('0 1', one item)
        with pytest.raises(UserError, match=r"e\.g\. glue\.seeds=\[0,1\]$"):
            config.load([], [f"glue.seeds={tuple_}"])


@pytest.mark.parametrize("override", ["train.run_dir=", "model.size=null"])
def test_no_value_for_a_key_that_needs_one_says_so(override):
    """Was "expects str, got the given value"."""
    key = override.partition("=")[0]
    with pytest.raises(UserError, match=rf"expects str, got null \(no value\), which it cannot "
                                        rf"be: give {re.escape(key)} a value$"):
        config.load([], [override])


def test_null_for_a_list_says_so_with_the_list_form():
    """Was "got None; write a list in brackets, e.g. glue.seeds=[None]" (itself refused)."""
    with pytest.raises(UserError, match=r"expects list\[int\], got null \(no value\), which it "
                                        r"cannot be: give glue\.seeds a value \(a list in "
                                        r"brackets, e\.g\. glue\.seeds=\[0\]\)$"):
        config.load([], ["glue.seeds=null"])
    with pytest.raises(UserError, match=r"expects items of list\[int\], got null \(no value\), "
                                        r"which it cannot be: give glue\.seeds\[0\] a value$"):
        config.load([], ["glue.seeds=[null]"])  # was "got the given value"


@pytest.mark.parametrize("where", ["override", "yaml"])
def test_a_mapping_where_a_list_belongs_is_one_line(tmp_path, where):
    """Was OmegaConf's TypeError traceback ("Cannot merge incompatible container types")."""
    path = tmp_path / "c.yaml"
    path.write_text("glue:\n  buckets:\n    a: 1\n")
    files, overrides = ([path], []) if where == "yaml" else ([], ["glue.buckets={a: 1}"])
    with pytest.raises(UserError, match=r"config key 'glue\.buckets' in .* expects list\[int\], "
                                        r"got the mapping \{'a': 1\}; write a list in brackets, "
                                        r"e\.g\. glue\.buckets=\[32, 64, 128\]$"):
        config.load(files, overrides)


def test_a_section_with_every_key_commented_out_is_empty(tmp_path):
    """`train:` with nothing under it is YAML's null; it was "expects TrainConfig, got None"."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  # steps: 5\nmodel:\n  size: mini\n")
    cfg = config.load([path])
    assert (cfg.train.steps, cfg.model.size) == (1000, "mini")


@pytest.mark.parametrize("override, says", [
    ("optim.lr=inf", "> 0 and finite"), ("optim.lr=-inf", "> 0 and finite"),
    ("glue.epochs=inf", "> 0 and finite"), ("optim.clip=inf", ">= 0 and finite"),
    ("precision.loss_scale=inf", "> 0 and at most 2**127"),
    # float32 on device: inf, which halves to inf (every step skipped as an overflow)
    ("precision.loss_scale=1e39", "> 0 and at most 2**127"),
    ("model.layer_norm_eps=1e400", "finite"),
    ("train.steps=2147483648", "> 0 and below 2**31"),  # optax counts steps in int32
    ("train.steps=99999999999999999999999", "below 2**31"),
    # jax.random.key keeps a seed's low 32 bits: seed 2**32 was seed 0, [1, 2**32 + 1] one seed
    ("train.seed=4294967296", ">= 0 and below 2**31"),
    ("glue.seeds=[1,4294967297]", "below 2**31"),
    ("glue.seeds=[0,99999999999999999999999]", "below 2**31"),
    ("train.tokens=99999999999999999999999", "below 2**63"),
])
def test_a_number_numpy_or_jax_cannot_hold_is_refused_at_load(override, says):
    key = override.partition("=")[0]
    with pytest.raises(UserError, match=rf"^{re.escape(key)}=.+ is invalid: it must be "
                                        rf".*{re.escape(says)}"):
        config.load([], [override])


def test_the_largest_numbers_that_fit_still_load():
    cfg = config.load([], ["train.steps=2147483647", "train.seed=2147483647",
                           "train.tokens=9223372036854775807", "optim.lr=1e300"])
    assert (cfg.train.steps, cfg.train.seed) == (2**31 - 1, 2**31 - 1)


@pytest.mark.parametrize("override", [
    "data.dir=''", "train.run_dir=' '", "tokenizer.path=''", "init.checkpoint=''",
    "glue.data_dir=''", "glue.train_file=''", "data.sources=[a.txt,'']", "glue.dev_files=['']",
])
def test_an_empty_path_is_refused_before_anything_is_written(override):
    key = override.partition("=")[0]
    with pytest.raises(UserError, match=rf"^{re.escape(key)}=.* is invalid: it must be a "
                                        "(non-empty path|list of non-empty paths)"):
        config.load([], [override])


@pytest.mark.parametrize("text", ["train:\n  run_dir: $HOME/runs/x\n",
                                  "train:\n  run_dir: ~/runs/x\n",
                                  "data:\n  sources: ['\\${HOME}/a.txt']\n",  # escaped: a literal
                                  "init:\n  checkpoint: ~user/run\n"])
def test_a_shell_variable_or_tilde_in_a_path_is_refused_with_the_oc_env_form(tmp_path, text):
    """Configs expand neither: `run_dir: $HOME/runs/x` made a directory named `$HOME` in the
    current one (and `~/x` one named `~`), exit 0."""
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError, match=r"is invalid: it must be a (non-empty path|list of "
                                        r"non-empty paths) of printable characters without "
                                        r"\$VAR or ~ \(configs expand "
                                        r"neither: write \$\{oc\.env:HOME\}/\.\.\. or the full"):
        config.load([tmp_path / "c.yaml"])
    assert config.load([], ["train.run_dir=${oc.env:HOME}/x"]).train.run_dir.endswith("/x")
    assert config.load([], ["train.run_dir=runs/a~b"]).train.run_dir == "runs/a~b"


@pytest.mark.parametrize("override", ["train.run_dir=gs://bucket/runs/x",
                                      "init.checkpoint=s3://bucket/run",
                                      "data.sources=[https://example.org/corpus.txt]"])
def test_a_url_as_a_path_is_refused(override):
    """`train.run_dir=gs://bucket/runs/x` (a TPU VM's natural choice) trained into a local folder
    named `gs:` and failed with an Orbax traceback at its first checkpoint."""
    with pytest.raises(UserError, match=r"is invalid: .*and local \(a bucket: mount it, e\.g\. "
                                        r"with gcsfuse, and give its path\)"):
        config.load([], [override])
    assert config.load([], ["train.run_dir=runs/gs:x"]).train.run_dir == "runs/gs:x"


@pytest.mark.parametrize("text", ["train:\n  run_dir: |\n    runs/x\n",
                                  'data:\n  sources: ["a.txt\\tb.txt"]\n'])
def test_a_control_character_in_a_path_is_refused(tmp_path, text):
    """A YAML `|` block keeps its line break: `run_dir: |` made a directory named 'x\\n'."""
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError, match=r"\\[nt].* is invalid: it must be a (non-empty path|list "
                                        r"of non-empty paths) of printable characters"):
        config.load([tmp_path / "c.yaml"])


def test_a_partial_multi_process_setting_names_the_missing_keys():
    """Without a launcher JAX detects, mesh keys given only in part are a one-line mistake (JAX
    itself raises ValueError). A subprocess: JAX refuses to initialize after any computation."""
    calls = ["initialize_distributed(MeshConfig(num_processes=2, process_id=0))",
             "initialize_distributed(MeshConfig(coordinator_address='notahost:1234'))"]
    code = "\n".join(["from bertjax.config import MeshConfig",
                      "from bertjax.errors import UserError",
                      "from bertjax.processes import initialize_distributed"] +
                     [f"try:\n    {call}\nexcept UserError as e:\n    print(e)" for call in calls])
    launchers = ("SLURM_", "OMPI_", "PMI_", "JAX_", "TPU_", "MEGASCALE_", "KUBERNETES_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launchers)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**env, "JAX_PLATFORMS": "cpu"}, timeout=120)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 2, out.stdout + out.stderr
    assert lines[0].startswith("mesh.num_processes=2 asks for a multi-process run") and \
        "set mesh.coordinator_address (" in lines[0]
    assert lines[1].startswith("mesh.coordinator_address=notahost:1234 asks") and \
        "set mesh.num_processes and mesh.process_id (" in lines[1]
    assert all("set mesh.coordinator_address, mesh.num_processes and mesh.process_id together"
               in line for line in lines)


@pytest.mark.parametrize("command", ["predict", "glue_score", "glue_submission", "export"])
def test_every_command_s_help_says_what_it_does(command, capsys):
    """predict's and glue_score's --help had no description, only their options."""
    module = importlib.import_module(f"bertjax.{command}")
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    first_paragraph = " ".join(module.__doc__.split("\n\n")[0].split())
    assert first_paragraph in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", [[], ["--print-config"]])
def test_nothing_to_run_names_the_demo_and_the_usage(argv):
    """Overrides alone are a config (the usage line showed CONFIG.yaml as required); nothing at
    all is one line naming what to give."""
    for front_door in (train, prepare):
        with pytest.raises(UserError) as e:
            front_door.main(argv)
        assert str(e.value).startswith("nothing to run: give a config file (configs/demo.yaml")
        assert str(e.value).endswith(front_door.USAGE) and "\n" not in str(e.value)
        assert front_door.USAGE.startswith(f"usage: python -m bertjax.{front_door.__name__[8:]} "
                                           "[CONFIG.yaml ...] [key=value ...]")


@pytest.mark.parametrize("argv", [["--help"], ["configs/demo.yaml", "--help"], ["-h"]])
def test_help_prints_usage_and_every_key_and_exits_0(argv, capsys):
    for front_door in (train, prepare):
        front_door.main(argv)  # returns: exit code 0, nothing loaded or written
        out = capsys.readouterr().out
        assert out.startswith(front_door.USAGE) and "section.key=value" in out
        assert "[CONFIG.yaml ...] [key=value ...]" in out  # several YAML files, overrides alone too
        # every key of the schema, with its declared default, type, domain and doc
        for section in dataclasses.fields(config.Config):
            for f in dataclasses.fields(section.default_factory):
                assert f"\n  {section.name}.{f.name} = " in out, f.name
                assert f"\n      {f.metadata['doc']}\n" in out, f.name
        assert "\n  model.num_layers = null  (int | None; > 0)\n" in out  # not the derived 2
        assert "\n  model.scan_layers = null  (bool | None)\n" in out
        assert "\n  glue.buckets = [32, 64, 128]  (list[int]; a non-empty, strictly increasing " \
               "list of values >= 8)\n" in out
        # a domain's own parentheses stay; a path's examples go (its error gives them)
        assert "\n  data.mask_rate = 0.15  (float; in (0, 1))\n" in out
        assert "\n  train.rollback_spike = 2.0  (float; 0 (no spike test) or > 1)\n" in out
        assert "\n  glue.data_dir = null  (str | None; a non-empty path of printable characters " \
               "without $VAR or ~, and local)\n" in out


def test_print_config_shows_what_a_command_line_resolves_to_and_runs_nothing(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the configs' relative run_dir and data.dir: nothing made here
    args = [str(ROOT / "configs" / "mnli.yaml"), "glue.epochs=2", "--print-config"]
    train.main(args)
    printed = capsys.readouterr().out
    expected = config.load([ROOT / "configs" / "mnli.yaml"], ["glue.epochs=2"])
    assert yaml.safe_load(printed) == config.to_dict(expected)
    assert yaml.safe_load(printed)["glue"]["epochs"] == 2.0
    (tmp_path / "printed.yaml").write_text(printed)  # a config file as it is
    assert config.load([tmp_path / "printed.yaml"], []) == expected
    prepare.main([str(ROOT / "configs" / "demo.yaml"), "--print-config", "data.seq_len=64"])
    assert yaml.safe_load(capsys.readouterr().out)["data"]["seq_len"] == 64
    for front_door in (train, prepare):  # overrides alone, over the defaults (prepare took none)
        front_door.main(["data.seq_len=64", "--print-config"])
        assert yaml.safe_load(capsys.readouterr().out)["data"]["seq_len"] == 64
        with pytest.raises(UserError, match=r"^nothing to run: give a config file"):
            front_door.main(["--print-config"])
    assert list(tmp_path.iterdir()) == [tmp_path / "printed.yaml"]
    with pytest.raises(UserError, match=r"unknown config key 'glue.epochz'.*'glue.epochs'"):
        train.main([*args, "glue.epochz=2"])
    for front_door in (train, prepare):  # was "config file --print-confg does not exist"
        with pytest.raises(UserError, match=r"^unknown option --print-confg; did you mean "
                                            r"--print-config\? the options are --help, --print"):
            front_door.main([str(ROOT / "configs" / "demo.yaml"), "--print-confg"])
    with pytest.raises(UserError, match=r"^--print-config=true: --print-config takes no value; "
                                        r"write --print-config$"):
        train.main([str(ROOT / "configs" / "demo.yaml"), "--print-config=true"])
    # A literal "${" (escaped in an override) is printed escaped: the file reads back the same.
    train.main([str(ROOT / "configs" / "demo.yaml"), "wandb.name=a\\${b}", "--print-config"])
    (tmp_path / "printed.yaml").write_text(capsys.readouterr().out)
    assert config.load([tmp_path / "printed.yaml"], []).wandb.name == "a${b}"
    (tmp_path / "-odd.yaml").write_text("train: {steps: 7}\n")  # a file is a file
    train.main(["-odd.yaml", "--print-config"])
    assert yaml.safe_load(capsys.readouterr().out)["train"]["steps"] == 7


def test_a_missing_file_that_is_a_key_or_an_include_says_so(tmp_path):
    with pytest.raises(UserError, match=r"config file train\.steps does not exist, and as an "
                                        r"override it lacks a value: write train\.steps=VALUE"):
        config.load(["train.steps"])
    (tmp_path / "task.yaml").write_text("include: base.yaml\n")
    with pytest.raises(UserError, match=r"base\.yaml, named by include: in .*task\.yaml, does "
                                        r"not exist; fix that include"):
        config.load([tmp_path / "task.yaml"])


def test_a_relative_config_missing_from_another_directory_names_where_it_looked(tmp_path,
                                                                             monkeypatch):
    """The README's `train configs/demo.yaml` started outside the repository did not say where
    the file was looked for, as the config's own paths do (files.from_cwd)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=rf"^config file configs/demo.yaml does not exist \(in "
                                        rf"the current directory, {tmp_path}\); pass a path"):
        config.load(["configs/demo.yaml"])


def test_omegaconfs_missing_marker_is_refused_not_silently_the_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: ???\n")
    for files, overrides in [([path], []), ([], ["optim.lr=???"])]:
        with pytest.raises(UserError, match=r"=\?\?\? in .*give (train\.steps|optim\.lr) a value"):
            config.load(files, overrides)


def test_a_config_file_whose_path_holds_an_equals_sign_is_a_file(tmp_path, monkeypatch):
    """`train runs/lr=1e-3/config.yaml` was taken for an override (a usage error: no CONFIG)."""
    path = tmp_path / "lr=1e-3" / "c.yaml"
    path.parent.mkdir()
    path.write_text("train:\n  steps: 7\n")
    monkeypatch.chdir(tmp_path)
    for given in (str(path), "lr=1e-3/c.yaml"):
        assert config.split_args([given, "train.seed=3"]) == ([given], ["train.seed=3"])
    assert config.split_args(["lr=2/c.yaml"]) == ([], ["lr=2/c.yaml"])  # no such file


def test_a_config_file_inside_the_run_dir_is_not_overwritten(tmp_path, monkeypatch):
    """`train config.yaml train.run_dir=.` replaced the user's config.yaml (comments,
    includes) by the run's resolved config, exit 0; a run's own config.yaml passed back is
    still read (a resume)."""
    from bertjax import train
    monkeypatch.chdir(tmp_path)
    mine = "# my notes\ntrain:\n  steps: 1\n"
    (tmp_path / "config.yaml").write_text(mine)
    with pytest.raises(UserError, match=r"^train.run_dir=\. would overwrite config.yaml, the "
                                        r"config file this command reads"):
        train.main(["config.yaml", "train.run_dir=."])
    assert (tmp_path / "config.yaml").read_text() == mine
    (tmp_path / "checkpoints").mkdir()  # a run's directory: its own saved config
    train.check_config_file_kept(["config.yaml"], str(tmp_path))


def test_a_pretraining_only_override_on_a_glue_run_is_warned_of(monkeypatch):
    """`train configs/rte.yaml ... data.seq_len=256` (for longer inputs) or train.micro_batch=8
    was silently ignored: GLUE reads glue.buckets and glue.batch_size."""
    from bertjax import train
    started = []
    monkeypatch.setattr(train, "finetune", started.append)
    with pytest.warns(UserWarning) as seen:
        train.main([str(ROOT / "configs/rte.yaml"), "data.seq_len=256", "train.micro_batch=8",
                    "glue.batch_size=8"])
    assert [str(w.message) for w in seen] == [
        "data.seq_len applies to pretraining only and is ignored by GLUE fine-tuning; it reads "
        "glue.buckets (the largest is the max length)",
        "train.micro_batch applies to pretraining only and is ignored by GLUE fine-tuning; it "
        "reads glue.batch_size"]
    assert len(started) == 1  # a warning, not a refusal


# ---- a str key keeps the characters written, not YAML 1.1's reading of them ----
AS_WRITTEN = [  # (key, value as typed, what the key holds); each was YAML 1.1's number or bool
    ("train.run_dir", "0010", "0010"),  # octal: was './8', another directory
    ("train.run_dir", "2024_01_15", "2024_01_15"),  # was '20240115'
    ("train.run_dir", "12:30", "12:30"),  # sexagesimal: was '750'
    ("init.checkpoint", "0010", "0010"),  # was './8', another run's weights
    ("data.hf_config", "1.10", "1.10"),  # was '1.1'
    ("wandb.name", "1e3", "1e3"),  # was '1000.0'
    ("data.text_column", "yes", "yes"),  # was 'True'
    ("glue.data_dir", "0755", "0755"),  # was '493'
    ("glue.dev_files", "[0010]", ["0010"]),  # was ['8']
    ("data.sources", "[2024_01, 1.10]", ["2024_01", "1.10"]),  # was ['202401', '1.1']
]


def _get(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("key, typed, held", AS_WRITTEN, ids=lambda v: str(v))
def test_a_str_key_keeps_an_override_as_typed(key, typed, held):
    assert _get(config.load([], [f"{key}={typed}"]), key) == held


@pytest.mark.parametrize("where", ["file", "include"])
@pytest.mark.parametrize("key, typed, held", AS_WRITTEN, ids=lambda v: str(v))
def test_a_str_key_keeps_a_yaml_value_as_written(tmp_path, key, typed, held, where):
    section, name = key.split(".")
    text = f"{section}:\n  {name}: {typed}\n"
    if where == "include":
        (tmp_path / "base.yaml").write_text(text)
        text = "include: base.yaml\n"
    (tmp_path / "c.yaml").write_text(text)
    assert _get(config.load([tmp_path / "c.yaml"]), key) == held


def test_values_as_written_survive_the_section_form_and_the_saved_config():
    # in `train={...}` too, run_dir is text and steps an int (1e1, not YAML's float)
    train = config.load([], ["train={run_dir: 0010, steps: 1e1}"]).train
    assert (train.run_dir, train.steps) == ("0010", 10)
    cfg = config.load([], [f"{key}={typed}" for key, typed, _ in AS_WRITTEN])
    again = config.from_yaml_text(config.to_yaml(cfg), "test")
    assert again == cfg and again.wandb.name == "1e3" and again.glue.dev_files == ["0010"]


def test_null_quotes_and_typed_keys_read_as_before(tmp_path):
    """Only plain scalars under str keys changed: null is still None, a quoted value is its text,
    and an int, float or bool key still reads YAML's value (and refuses text)."""
    cfg = config.load([], ["wandb.name=null", "init.checkpoint=~", "glue.data_dir=",
                           "train.run_dir='0010'", "data.hf_config=\"null\"",
                           "train.steps=1_000", "optim.lr=1e-3", "tokenizer.lowercase=no"])
    assert (cfg.wandb.name, cfg.init.checkpoint, cfg.glue.data_dir) == (None, None, None)
    assert (cfg.train.run_dir, cfg.data.hf_config) == ("0010", "null")
    assert (cfg.train.steps, cfg.optim.lr, cfg.tokenizer.lowercase) == (1000, 1e-3, False)
    path = tmp_path / "c.yaml"
    path.write_text("wandb:\n  name: ~\n  entity: null\ninit:\n  checkpoint:\n")
    cfg = config.load([path])
    assert (cfg.wandb.name, cfg.wandb.entity, cfg.init.checkpoint) == (None, None, None)
    with pytest.raises(UserError, match=r"'train.steps' .* expects int .* got 'ten'"):
        config.load([], ["train.steps=ten"])
    path.write_text("train:\n  steps: ten\n")
    with pytest.raises(UserError, match=r"'train.steps' in .*c.yaml expects int .* got 'ten'"):
        config.load([path])
    with pytest.raises(UserError, match=r"expects str, got null \(no value\)"):
        config.load([], ["train.run_dir=null"])
    # one value where a list belongs: the example shows it as typed (was data.sources=[8])
    with pytest.raises(UserError, match=r"got '0010'; write a list in brackets, e\.g\. "
                                        r"data\.sources=\[0010\]$"):
        config.load([], ["data.sources=0010"])


# ---- the fourteenth probe: configs and overrides as users write them ----
def test_an_int_written_as_a_float_is_that_int(tmp_path):
    """`tokens: 3e10` (YAML 1.2's and Python's spelling) and `train.steps=1e3` were refused
    ("expects int, got 30000000000.0"); now the int, exactly as written (not via a float)."""
    path = tmp_path / "c.yaml"
    for written, held in [("3e10", 30_000_000_000), ("3.0e+10", 30_000_000_000),
                          ("30000000000.0", 30_000_000_000),
                          ("1.23456789012345678e17", 123_456_789_012_345_678)]:
        path.write_text(f"train:\n  tokens: {written}\n")
        assert config.load([path]).train.tokens == held
    cfg = config.load([], ["train.steps=1e3", "train.seed=7.0", "glue.seeds=[1e1,2.0]"])
    assert (cfg.train.steps, cfg.train.seed, cfg.glue.seeds) == (1000, 7, [10, 2])
    with pytest.raises(UserError, match=r"'train.steps' .* expects int \| None, got 1.5$"):
        config.load([], ["train.steps=1.5"])
    with pytest.raises(UserError, match=r"^train.steps=1000000000000 is invalid: .*below 2\*\*31"):
        config.load([], ["train.steps=1e12"])


@pytest.mark.parametrize("where", ["override", "yaml"])
@pytest.mark.parametrize("key, written, says", [
    ("train.seed", "0042", r"with a leading 0 as octal \(34\); write it without the leading zeros "
                           r"\(42\)$"),  # was seed 34, silently
    ("train.steps", "010", r"with a leading 0 as octal \(8\)"),
    ("glue.epochs", "010", r"with a leading 0 as octal \(8\)"),
    ("train.steps", "1:30", r"with ':' in base 60 \(1:30 is 90\); write the number itself$"),
])
def test_a_number_yaml_1_1_reads_otherwise_is_refused(tmp_path, where, key, written, says):
    section, name = key.split(".")
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {name}: {written}\n")
    files, overrides = ([path], []) if where == "yaml" else ([], [f"{key}={written}"])
    with pytest.raises(UserError, match=rf"^{re.escape(key)}={re.escape(written)} in .*: YAML "
                                        rf"1\.1 reads a number {says}"):
        config.load(files, overrides)


def test_numbers_yaml_1_1_reads_as_written_still_load():
    cfg = config.load([], ["train.steps=07", "train.seed=09", "train.log_every=0x10",
                           "train.eval_every=1_000", "train.run_dir=0042"])
    assert (cfg.train.steps, cfg.train.seed, cfg.train.log_every) == (7, 9, 16)
    assert (cfg.train.eval_every, cfg.train.run_dir) == (1000, "0042")


@pytest.mark.parametrize("override", ["init.checkpoint=None", "wandb.name=none",
                                      "train.tokens=None", "model.remat=None"])
def test_pythons_none_for_a_nullable_key_says_null(override):
    """`init.checkpoint: None` loaded a checkpoint named 'None' (and `wandb.name=None` named the
    run so); for an int or bool key it said "expects int | None, got 'None'"."""
    key, _, written = override.partition("=")
    with pytest.raises(UserError, match=rf"^{re.escape(override)} in .*: YAML's null is null or "
                                        rf"~, not {written} \(Python's\); write {key}=null, or "
                                        rf"quote '{written}' to mean the text$"):
        config.load([], [override])


def test_none_quoted_is_the_text_and_survives_the_saved_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("init:\n  checkpoint: None\n")
    with pytest.raises(UserError, match=r"init.checkpoint=None in .*c.yaml: YAML's null"):
        config.load([path])
    cfg = config.load([], ["wandb.name='None'"])
    # OmegaConf writes the text unquoted (`name: None`): a saved config reads it back as text
    assert config.from_yaml_text(config.to_yaml(cfg), "saved").wandb.name == "None"


@pytest.mark.parametrize("override, was", [
    ("wandb.name=run #2", "run"), ("train.run_dir=runs/lr 1e-3 #2", "'runs/lr 1e-3'"),
    ("wandb.name=#2", "null"), ("train.steps=100  # the trial", "100"),
])
def test_a_comment_inside_an_override_is_refused(override, was):
    """A ' #' in one shell word was YAML's comment: `wandb.name='run #2'` named the run 'run',
    `train.run_dir='runs/lr 1e-3 #2'` trained into runs/lr 1e-3."""
    key, _, value = override.partition("=")
    with pytest.raises(UserError, match=rf"^override .*: YAML reads '#' after a space \(or "
                                        rf"first\) as the start of a comment, so {re.escape(key)} "
                                        rf"would be {re.escape(was)}; drop the comment, or quote "
                                        rf"the value inside the argument to keep the '#': "
                                        rf"'{re.escape(key)}=\"{re.escape(value)}\"'$"):
        config.load([], [override])


def test_a_hash_that_is_no_comment_is_kept():
    cfg = config.load([], ["wandb.name=run#2", "wandb.entity='team #2'", 'train.run_dir="a #b"'])
    assert (cfg.wandb.name, cfg.wandb.entity, cfg.train.run_dir) == ("run#2", "team #2", "a #b")


@pytest.mark.parametrize("text, says", [
    ("42\n", "not the value '42'"),  # was an IndexError traceback (OmegaConf: a bare assert)
    ("true\n", "not the value 'true'"),
])
def test_a_config_that_is_a_bare_value_is_one_line(tmp_path, text, says):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError, match=rf"c\.yaml must hold a mapping of sections .*, {says}"):
        config.load([tmp_path / "c.yaml"])


@pytest.mark.parametrize("text", ["---\n", "null\n", "~\n", "include:\n", "include:\n# - a.yaml\n"])
def test_an_empty_document_or_include_sets_nothing(tmp_path, text):
    """`---` alone was "must hold a mapping ..., not the value ''" (an empty file loads);
    `include:` with its files commented out was "must be a YAML file path ..., got None"."""
    (tmp_path / "c.yaml").write_text(text)
    assert config.load([tmp_path / "c.yaml"]) == config.load()


@pytest.mark.parametrize("text, key, example", [
    ("train.steps: 5\n", "train.steps", r"'train:' then '  steps: \.\.\.'"),
    ("train:\n  optim.lr: 5\n", "optim.lr", r"'optim:' then '  lr: \.\.\.'"),  # a section
])
def test_a_dotted_key_in_yaml_says_to_nest_it(tmp_path, text, key, example):
    """Was "unknown config key 'train.steps'; did you mean 'train.steps'?"."""
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError, match=rf"^key '{re.escape(key)}' in .*c\.yaml: YAML does not "
                                        rf"split keys at dots; nest them, e\.g\. {example} on"):
        config.load([tmp_path / "c.yaml"])


def test_a_misspelt_include_suggests_include(tmp_path):
    (tmp_path / "c.yaml").write_text("includes: base.yaml\n")  # was "did you mean 'glue'?"
    with pytest.raises(UserError, match=r"unknown config key 'includes' .*did you mean 'include'"):
        config.load([tmp_path / "c.yaml"])


@pytest.mark.parametrize("argument, says", [
    ("+train.new_key=1", r"there is no \+key or \+\+key \(Hydra's add\): every key exists "
                         r"already; write train.new_key=1$"),
    ("~train.steps", r"there is no ~key \(Hydra's delete\); leave train.steps out to keep its "
                     r"default, or set it: train.steps=VALUE$"),
    ("--train.steps=5", r"overrides take no leading dashes; write train.steps=5$"),
    ("train.steps =5", r"no spaces around '='; write train.steps=5$"),
    ("train.steps:5", r"an override is section.key=value; write train.steps=5$"),
    ("train.micro-batch=8", r"keys are written with underscores; write train.micro_batch=8$"),
])
def test_another_tools_override_syntax_is_named_with_ours(argument, says):
    """Each was "is not section.key=value" (`~train.steps`: "config file ... does not
    exist")."""
    files, overrides = config.split_args([argument])
    with pytest.raises(UserError, match=rf"^override {re.escape(repr(argument))}: {says}"):
        config.load(files, overrides)


@pytest.mark.parametrize("where", ["override", "yaml"])
def test_a_quoted_list_says_to_unquote_it(tmp_path, where):
    """The hint was glue.seeds=[[0, 1]], itself wrong."""
    (tmp_path / "c.yaml").write_text("glue:\n  seeds: '[0, 1]'\n")
    files, overrides = ([tmp_path / "c.yaml"], []) if where == "yaml" else \
        ([], ["glue.seeds='[0, 1]'"])
    with pytest.raises(UserError, match=r"got '\[0, 1\]'; the list is quoted, so it is text: "
                                        r"write it without the quotes, e\.g\. "
                                        r"glue\.seeds=\[0, 1\]$"):
        config.load(files, overrides)


@pytest.mark.parametrize("argv, says", [
    (["glue.seeds=[0,", "1]"], r"^'1\]' follows the override 'glue.seeds=\[0,' but is no config "
                               r"file: the shell splits words at spaces; quote the whole "
                               r"override, e\.g\. 'glue.seeds=\[0, 1\]'$"),
    (["wandb.name=my", "run"], r"^'run' follows the override 'wandb.name=my' .*'wandb.name=my "
                               r"run'$"),
])
def test_an_override_the_shell_split_at_a_space_says_to_quote_it(tmp_path, monkeypatch, argv,
                                                                  says):
    """Was "config file 1] does not exist"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=says):
        config.split_args(argv)
    (tmp_path / "c.yaml").write_text("")  # a real file after an override is a file
    assert config.split_args(["train.steps=5", "c.yaml"]) == (["c.yaml"], ["train.steps=5"])
    assert config.split_args(["train.steps=5", "c"]) == (["c"], ["train.steps=5"])  # c.yaml?


def test_a_missing_file_says_what_was_likely_meant(tmp_path):
    (tmp_path / "tiny.yaml").write_text("")
    with pytest.raises(UserError, match=rf"does not exist; pass a path to a YAML file \(did you "
                                        rf"mean {re.escape(str(tmp_path / 'tiny.yaml'))}\?\)$"):
        config.load([tmp_path / "tiny"])
    (tmp_path / "c.yaml").write_text("include: ~/base.yaml\n")
    with pytest.raises(UserError, match=r"\(paths are relative to .*, and expand neither ~ nor "
                                        r"\$VAR: write \$\{oc.env:HOME\}/\.\.\.\)$"):
        config.load([tmp_path / "c.yaml"])
    (tmp_path / "c.yaml").write_text("train:\n  steps:5\n")
    with pytest.raises(UserError, match=r"'train' in .* is steps:5 \(YAML needs a space after "
                                        r"the ':'\), but it is a section"):
        config.load([tmp_path / "c.yaml"])


@pytest.mark.parametrize("override, meant", [
    ("glue.task=SST-2", "glue.task=sst2"), ("glue.task=MNLI", "glue.task=mnli"),
    ("glue.task=STS-B", "glue.task=stsb"), ("model.size=Base", "model.size=base"),
])
def test_a_choice_in_another_case_or_spelling_names_the_choice(override, meant):
    """GLUE's own task names (SST-2, STS-B) were refused with only the list of choices."""
    with pytest.raises(UserError, match=rf"^{re.escape(override)} is invalid: .*; did you mean "
                                        rf"{re.escape(meant)}\?$"):
        config.load([], [override])


def test_fill_mask_sentences_yaml_reads_otherwise_say_to_quote(tmp_path):
    """A sentence starting with [MASK] is a YAML list, one holding ': ' a mapping; the hint for
    one sentence where a list belongs was train.fill_mask=[The [MASK] sat.], itself a nested
    list."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  fill_mask:\n    - [MASK] is a keyword.\n")
    with pytest.raises(UserError, match=r"line 3, .*; close the bracket, or quote the value if "
                                        r"it is text starting with '\['$"):
        config.load([path])
    train = config.TrainConfig()  # as `- Python: the [MASK] language.` reads (bertjax's tests
    object.__setattr__(train, "fill_mask", [{"Python": "the [MASK] language."}])  # type-check
    with pytest.raises(UserError, match=r"is not list\[str\] \(an item holding ': ' is a mapping "
                                        r"in YAML: quote it\)"):  # constructors, so set)
        check_domains(train)
    with pytest.raises(UserError, match=r"e\.g\. train\.fill_mask=\['The \[MASK\] sat\.'\]$"):
        config.load([], ["train.fill_mask=The [MASK] sat."])
    assert config.load([], ["train.fill_mask=['The [MASK] sat.']"]).train.fill_mask == \
        ["The [MASK] sat."]
