"""Every config key: its section, default, doc and domain, as frozen dataclasses.

The one reference of what a config may say, read top to bottom. Every field declares its domain
next to its default (`opt(..., domain=POSITIVE)`, vocabulary in domains.py); `check_domains`
checks them all whenever a section is built, so before any work starts. config.py reads YAML
files and overrides into these classes (and re-exports them: import them from bertjax.config).
"""

from dataclasses import dataclass, field

from bertjax.domains import (
    FRACTION,
    NON_NEGATIVE,
    PATH,
    PATHS,
    POSITIVE,
    UNIT_CLOSED,
    UNIT_OPEN,
    XLA_FLAGS,
    Domain,
    at_least,
    check_domains,
    containing,
    interval,
    list_of,
    one_of,
    opt,
)
from bertjax.errors import UserError

# Turc et al. 2019 ("Well-Read Students Learn Better") shapes; base/large are BERT's own.
# name: (num_layers, hidden_size, num_heads); the feed-forward size is 4 * hidden.
MODEL_SIZES = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}
# The model keys `size` decides while they are null (ModelConfig.__post_init__).
SIZE_DERIVED = ("num_layers", "hidden_size", "num_heads", "intermediate_size")


@dataclass(frozen=True)
class ModelConfig:
    size: str = opt("tiny", "named shape: tiny | mini | small | medium | base | large",
                    domain=one_of(*MODEL_SIZES))
    num_layers: int | None = opt(None, "encoder blocks; null = from size", domain=POSITIVE)
    hidden_size: int | None = opt(None, "model width; null = from size", domain=POSITIVE)
    num_heads: int | None = opt(None, "attention heads; null = from size", domain=POSITIVE)
    intermediate_size: int | None = opt(None, "feed-forward width; null = 4 * hidden_size",
                                        domain=POSITIVE)
    vocab_size: int | None = opt(None, "vocabulary rows; null = the tokenizer's size",
                                 domain=POSITIVE)
    max_position_embeddings: int = opt(512, "learned positions", domain=POSITIVE)
    position_init: str = opt("normal", "initial position rows: normal (BERT) | sinusoidal",
                             domain=one_of("normal", "sinusoidal"))
    type_vocab_size: int = opt(2, "token type (segment) embeddings; 1 = pairs read as one "
                                 "segment (RoBERTa)", domain=POSITIVE)
    norm: str = opt("pre", "pre (pre-LayerNorm + final norm) | post (original BERT)",
                    domain=one_of("pre", "post"))
    dropout: float = opt(0.1, "hidden dropout", domain=FRACTION)
    attention_dropout: float = opt(0.1, "attention-probability dropout (>0 uses the explicit "
                                   "path)", domain=FRACTION)
    attention: str = opt("auto", "attention kernel: auto (cuDNN flash attention on NVIDIA GPUs in "
                         "bf16/fp16, else XLA's) | xla | cudnn (as auto, warning where it cannot)",
                         domain=one_of("auto", "xla", "cudnn"))
    layer_norm_eps: float = opt(1e-12, "LayerNorm epsilon (BERT: 1e-12)", domain=POSITIVE)
    gelu: str = opt("exact", "GELU of the feed-forward blocks (and of a post-LN model's MLM "
                    "head, as in Hugging Face's BERT): exact (erf; BERT's, Hugging Face's 'gelu') "
                    "| tanh (the approximation, Hugging Face's 'gelu_pytorch_tanh'; cuBLAS can "
                    "compute it in its matmul: log.md, session 46)",
                    domain=one_of("exact", "tanh"))
    scan_layers: bool | None = opt(None, "run the blocks as one lax.scan (compile time "
                                   "independent of depth) or unrolled; null = scan on CPU, "
                                   "unrolled on GPU/TPU, where the scan copies the activations "
                                   "it keeps for the backward pass (log.md, session 45)")
    remat: bool | None = opt(None, "recompute each block in the backward pass instead of storing "
                             "its activations: less memory; null = on for CPU, where it is "
                             "also faster (log.md, 2026-12-01), off on GPU/TPU")

    def __post_init__(self):
        check_domains(self)
        layers, hidden, heads = MODEL_SIZES[self.size]
        set_default = lambda name, value: (  # noqa: E731
            object.__setattr__(self, name, value) if getattr(self, name) is None else None
        )
        set_default("num_layers", layers)
        set_default("hidden_size", hidden)
        set_default("num_heads", heads)
        set_default("intermediate_size", 4 * self.hidden_size)
        if self.hidden_size % self.num_heads:
            raise UserError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_heads={self.num_heads}; pick sizes whose ratio is an integer"
            )


@dataclass(frozen=True)
class TokenizerConfig:
    path: str | None = opt(None, "existing tokenizer.json or BERT vocab.txt to use (or a "
                           "directory holding one: a Hugging Face model's), or a Hugging Face "
                           "hub model id (its tokenizer, downloaded); null = train one on the "
                           "corpus", domain=PATH)
    vocab_size: int = opt(8192, "WordPiece vocabulary size when training", domain=at_least(100))
    lowercase: bool = opt(True, "BERT normalizer lowercases and strips accents")
    min_frequency: int = opt(2, "minimum pair frequency for a WordPiece merge",
                             domain=NON_NEGATIVE)

    def __post_init__(self):
        check_domains(self)


OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop")
# The fine-tuning tasks (glue_tasks.TASKS has them all, plus the test-only diagnostic set `ax`).
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise UserError(f"data.objective={objective!r}: use {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class DataConfig:
    dir: str = opt("data/demo", "prepared data directory (token ids, document lengths, "
                    "tokenizer.json, meta.json)", domain=PATH)
    sources: list[str] = opt([], "local text/jsonl/parquet files or globs",
                              domain=PATHS)
    hf_dataset: str | None = opt(None, "Hugging Face hub dataset name (streamed)")
    hf_config: str | None = opt(None, "hub dataset config, e.g. 20231101.en")
    hf_split: str = opt("train", "hub dataset split")
    text_column: str = opt("text", "column holding the text (hub, jsonl, parquet)")
    builtin: str | None = opt(None, "embedded corpus: 'stdlib' (Python's own docs, offline)")
    validation_fraction: float = opt(0.01, "fraction of documents held out for validation",
                                     domain=FRACTION)
    max_documents: int | None = opt(None, "stop after this many documents (null = all)",
                                    domain=POSITIVE)
    seq_len: int = opt(128, "tokens per training sequence, [CLS] and [SEP] included",
                       domain=at_least(8))
    objective: str = opt("mlm", "mlm | mlm+nsp | mlm+sop", domain=one_of(*OBJECTIVES))
    mask_rate: float = opt(0.15, "fraction of tokens to predict (BERT: 0.15)", domain=UNIT_OPEN)
    max_predictions: int | None = opt(None, "predictions per sequence; null = ceil(rate*len)",
                                      domain=POSITIVE)
    whole_word_mask: bool = opt(False, "pick whole words: a word's '##' pieces are predicted "
                                "with it or not at all (BERT's whole-word masking)")
    prefetch: int = opt(2, "batches prepared ahead by the loader thread", domain=POSITIVE)

    def __post_init__(self):
        check_domains(self)
        if self.max_predictions is not None and self.max_predictions > self.seq_len:
            raise UserError(f"data.max_predictions={self.max_predictions} exceeds data.seq_len="
                            f"{self.seq_len}; predict at most one token per position (or null)")

    @property
    def predictions(self) -> int:
        """Fixed number of predicted positions per sequence (a static shape for XLA)."""
        if self.max_predictions is not None:
            return self.max_predictions
        return -(-int(self.mask_rate * self.seq_len * 1000) // 1000)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = opt(1e-3, "peak learning rate", domain=POSITIVE)
    schedule: str = opt("one_cycle", "one_cycle | linear (warmup + linear decay) | constant; "
                        "pretraining only: GLUE fine-tuning always decays linearly to 0",
                        domain=one_of("one_cycle", "linear", "constant"))
    warmup: float = opt(0.1, "warm-up length as a fraction of training steps", domain=FRACTION)
    final_lr_fraction: float = opt(0.01, "one_cycle/linear: final lr as a fraction of peak",
                                   domain=UNIT_CLOSED)
    weight_decay: float = opt(0.01, "AdamW decoupled weight decay (matrices and embeddings only)",
                              domain=NON_NEGATIVE)
    b1: float = opt(0.9, "Adam beta1", domain=FRACTION)
    b2: float = opt(0.98, "Adam beta2", domain=FRACTION)
    eps: float = opt(1e-6, "Adam epsilon", domain=POSITIVE)
    clip: float = opt(1.0, "global gradient-norm clip (0 = off)", domain=NON_NEGATIVE)

    def __post_init__(self):
        check_domains(self)


# The scale is a float32 on device: 1e39 was inf there, which halves to inf, so every step
# overflowed; counted as the scale's own overflows (skipped, never trouble), the whole run
# trained nothing.
LOSS_SCALE = Domain("> 0 and at most 2**127 (a float32)", lambda x: 0 < x <= 2.0**127)


@dataclass(frozen=True)
class PrecisionConfig:
    """Parameters and optimizer state are always float32 (`compute` casts them per step)."""

    compute: str = opt("float32", "activation dtype: float32 | bfloat16 | float16",
                       domain=one_of("float32", "bfloat16", "float16"))
    loss_scale: float = opt(2.0**15, "fp16 only: initial dynamic loss scale", domain=LOSS_SCALE)
    loss_scale_period: int = opt(2000, "fp16 only: finite steps before the scale doubles",
                                 domain=POSITIVE)

    def __post_init__(self):
        check_domains(self)


@dataclass(frozen=True)
class MeshConfig:
    strategy: str = opt("dp", "dp (replicated params) | fsdp (params sharded on the data axis)",
                        domain=one_of("dp", "fsdp"))
    fsdp_min_size: int = opt(2**14, "fsdp: arrays smaller than this stay replicated",
                             domain=NON_NEGATIVE)
    coordinator_address: str | None = opt(None, "multi-host: host:port of process 0 (null = auto)")
    num_processes: int | None = opt(None, "multi-host: process count (null = auto)",
                                    domain=POSITIVE)
    process_id: int | None = opt(None, "multi-host: this process's index (null = auto)",
                                 domain=NON_NEGATIVE)
    join_timeout: int = opt(300, "multi-host: seconds every process waits for the others to "
                            "join (JAX's default; raise it where hosts start minutes apart)",
                            domain=POSITIVE)

    def __post_init__(self):
        check_domains(self)
        if None not in (self.num_processes, self.process_id) and \
                self.process_id >= self.num_processes:
            raise UserError(f"mesh.process_id={self.process_id} must be below "
                            f"mesh.num_processes={self.num_processes} (processes count from 0)")


@dataclass(frozen=True)
class TrainConfig:
    task: str = opt("pretrain", "pretrain | glue", domain=one_of("pretrain", "glue"))
    run_dir: str = opt("runs/demo", "where config, metrics, checkpoints and plots go",
                        domain=PATH)
    steps: int | None = opt(1000, "optimizer steps (null = from train.tokens; left unset, null "
                            "when train.tokens is set)", domain=POSITIVE)
    tokens: int | None = opt(None, "token budget, counted as sequences x data.seq_len (an NSP/SOP "
                             "row's padding too); when set, overrides steps", domain=POSITIVE,
                             int_bits=64)
    micro_batch: int = opt(32, "sequences per forward/backward (global, across devices)",
                           domain=POSITIVE)
    batch_start: int | None = opt(None, "global batch at step 0 (null = batch_end)",
                                  domain=POSITIVE)
    batch_end: int | None = opt(None, "global batch after the ramp (null = micro_batch)",
                                domain=POSITIVE)
    batch_ramp: float = opt(0.0, "fraction of training over which the batch grows linearly",
                            domain=UNIT_CLOSED)
    batch_ramp_stages: int = opt(8, "ramp increments; the train step compiles <= stages+1 times",
                                 domain=POSITIVE)
    # 32 bits: jax.random.key keeps only a seed's low 32 bits (64-bit types are off), so seed
    # 2**32 would be seed 0 again
    seed: int = opt(0, "root seed: data order, masks, dropout, init", domain=NON_NEGATIVE)
    resume: str = opt("auto", "auto (newest complete checkpoint) | never",
                      domain=one_of("auto", "never"))
    log_every: int = opt(10, "steps between log lines / metrics.jsonl rows", domain=POSITIVE)
    eval_every: int = opt(200, "steps between validation passes (0 = only at the end)",
                          domain=NON_NEGATIVE)
    eval_sequences: int = opt(256, "validation sequences per pass, at most (a smaller split is "
                              "scored whole); the same ones whatever micro_batch",
                              domain=POSITIVE)
    checkpoint_every: int = opt(500, "steps between checkpoints (0 = only at the end)",
                                domain=NON_NEGATIVE)
    keep_checkpoints: int = opt(2, "newest checkpoints kept (at 1, a divergence right after "
                                 "a checkpoint has none before it to roll back to: the run stops)",
                                 domain=POSITIVE)
    max_nonfinite: int = opt(10, "float16: non-finite steps in a row that roll back (fewer are "
                             "skipped; the loss scale's own overflows, a finite loss at a scale "
                             "above 1, are skipped and not counted); others: 1 does",
                             domain=POSITIVE)
    profile: list[int] = opt([], "[FIRST, LAST] (or [STEP]): trace these steps (counted from "
                             "1, step 1 compiling; fine-tuning: of the first seed trained to "
                             "them) with jax.profiler into RUN/profile, for TensorBoard, xprof "
                             "or Perfetto; [] = none",
                             domain=Domain("[], [STEP] or [FIRST, LAST] with 1 <= FIRST <= LAST",
                                           lambda xs: xs == [] or (len(xs) in (1, 2) and
                                                                   1 <= xs[0] <= xs[-1])))
    fill_mask: list[str] = opt([], "sentences with [MASK] to complete at the end of training",
                               domain=list_of(containing("[MASK]")))
    rollback_spike: float = opt(2.0, "a loss above this times the running mean of the losses "
                                "before it is a spike and rolls back (0 = no spike test)",
                                # at 1 or below, a loss no higher than the mean is a spike:
                                # every step rolled back and the run did not train, exit 0
                                domain=Domain("0 (no spike test) or > 1",
                                              lambda x: x == 0 or x > 1))
    rollback_sigmas: float = opt(6.0, "after the warm-up a spike must also exceed the running "
                                 "mean by this many running standard deviations",
                                 domain=NON_NEGATIVE)
    rollback_warmup: int = opt(20, "steps of running statistics before the sigma test applies",
                               domain=NON_NEGATIVE)
    rollback_lr_factor: float = opt(0.5, "each rollback multiplies the learning rate by this",
                                    domain=interval(0, 1, "(]"))
    max_rollbacks: int = opt(3, "rollbacks a diverging run may take before it stops (exit 1)",
                             domain=NON_NEGATIVE)
    xla_flags: str = opt("", "XLA options for this run's train and eval steps, written as "
                         "XLA_FLAGS writes them (--xla_gpu_enable_triton_gemm=false ...); passed "
                         "to their compiles alone (bertjax/xla_options.py)", domain=XLA_FLAGS)

    def __post_init__(self):
        check_domains(self)
        if self.steps is None and self.tokens is None:
            raise UserError("set train.steps or train.tokens")
        end = self.batch_end or self.micro_batch
        # batch_end first: an unset batch_start takes its value, and the message must name the
        # key the user set (it said "batch_start=8" after only batch_end=8 was given).
        for name, value in (("batch_end", end), ("batch_start", self.batch_start or end)):
            if value % self.micro_batch:
                raise UserError(f"train.{name}={value} must be a multiple of "
                                f"train.micro_batch={self.micro_batch}")
        if self.batch_start is not None and self.batch_start > end:  # swapped, most likely
            raise UserError(f"train.batch_start={self.batch_start} is above train.batch_end={end}: "
                            "the ramp grows the batch from batch_start to batch_end; swap them, or "
                            "set batch_start to at most batch_end")


@dataclass(frozen=True)
class WandbConfig:
    mode: str = opt("disabled", "disabled | offline | online (online needs a valid API key)",
                    domain=one_of("disabled", "offline", "online"))
    project: str = opt("bertjax", "wandb project")
    name: str | None = opt(None, "run name (null = the run directory's name)")
    entity: str | None = opt(None, "wandb entity (team or user)")

    def __post_init__(self):
        check_domains(self)


@dataclass(frozen=True)
class InitConfig:
    checkpoint: str | None = opt(None, "start from: run dir, checkpoint dir, bundle or HF BERT dir "
                                 "(pretraining: continue from its weights when the run is new)",
                                 domain=PATH)
    tokenizer_mismatch_ok: bool = opt(False, "accept a bundle whose tokenizer.json is not the "
                                      "one its weights were exported with (its manifest says)")

    def __post_init__(self):
        check_domains(self)


@dataclass(frozen=True)
class GlueConfig:
    task: str = opt("mnli", " | ".join(GLUE_TASKS), domain=one_of(*GLUE_TASKS))
    data_dir: str | None = opt(None, "directory of original GLUE TSVs (null = the hub)",
                               domain=PATH)
    # 32 bits, as train.seed: seeds 1 and 2**32 + 1 would train the same model twice
    seeds: list[int] = opt([0], "fine-tuning seeds; results report mean, median and spread",
                           domain=list_of(NON_NEGATIVE, non_empty=True, unique=True))
    learning_rates: list[float] = opt([], "rates to sweep, each fine-tuning every seed in "
                                      "train.run_dir/lr<rate>/ (BERT: [5e-5, 4e-5, 3e-5, 2e-5]); "
                                      "sweep.json names the best; [] = optim.lr alone",
                                      domain=list_of(POSITIVE, unique=True))
    epochs: float = opt(3.0, "passes over the training set", domain=POSITIVE)
    batch_size: int = opt(32, "sequences per step", domain=POSITIVE)
    buckets: list[int] = opt([32, 64, 128], "padded lengths; the largest is the max length",
                             domain=list_of(at_least(8), non_empty=True,
                                            increasing=True))
    classifier_dropout: float = opt(0.1, "dropout before the classifier", domain=FRACTION)
    pooling: str = opt("cls", "what the pooler reads: cls (BERT: the [CLS] state) | mean (the "
                       "average of the real tokens' states)", domain=one_of("cls", "mean"))
    max_train_examples: int | None = opt(None, "use only the first N training rows",
                                         domain=POSITIVE)
    train_file: str | None = opt(None, "override the training TSV name inside data_dir",
                                 domain=PATH)
    dev_files: list[str] = opt([], "override the dev TSV names inside data_dir",
                                domain=PATHS)

    def __post_init__(self):
        check_domains(self)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    init: InitConfig = field(default_factory=InitConfig)
    glue: GlueConfig = field(default_factory=GlueConfig)
