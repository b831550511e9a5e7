"""What a compiled XLA:GPU program launches, read from its optimized HLO text, no GPU needed.

`kernels(hlo_text)` lists the kernels one execution runs, in order: each fusion, library call
(cuBLAS, cuDNN) and copy of the entry computation, while-loop bodies counted as often as their
known trip count. For each: a family, the bytes it reads and writes in device memory (a
parameter a fusion only slices counts as the slice; a buffer updated in place counts as the
update) and, for matmuls, the FLOPs. `family_table` sums them by family with a roofline time,
max(bytes / memory bandwidth, FLOPs / peak), per kernel.

These are static estimates: no launch overhead, no cache reuse, peak rates; a collective counts
its buffers' bytes in device memory, not its time on the links. Their use is to compare two
programs (a code change, a config, a flag) before a GPU measures them. One rough calibration:
the only H100 trace read so far (log.md, session 5: 52.7 ms of kernels, XLA's attention,
jax 0.11) is close to this roofline for that configuration today (49.3 ms, jax 0.10).
"""

import math
import re
from collections import defaultdict

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
SHAPE = re.compile(r"\b(pred|[su](?:8|16|32|64)|f16|bf16|f32|f64)\[([0-9,]*)\]")
INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%(\S+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$")
COMPUTATION = re.compile(r"^(ENTRY\s+)?%(\S+)\s*\(.*\{\s*$")
# Instructions that launch nothing: bookkeeping of tuples and buffers.
NO_KERNEL = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "after-all",
             "partition-id", "replica-id", "opt-barrier", "add-dependency"}
DATA_MOVEMENT = {"parameter", "bitcast", "copy", "transpose", "slice", "dynamic-slice",
                 "concatenate", "reshape", "broadcast", "constant", "tuple", "pad"}


def elements(dims: str) -> int:
    n = 1
    for d in filter(None, dims.split(",")):
        n *= int(d)
    return n


def nbytes(type_text: str) -> int:
    """Bytes of every array shape in an HLO type (a tuple's too)."""
    return sum(elements(dims) * DTYPE_BYTES[dtype] for dtype, dims in SHAPE.findall(type_text))


def dims(type_text: str) -> list[int]:
    """The first array shape's dimensions."""
    found = SHAPE.search(type_text)
    return [int(d) for d in filter(None, found.group(2).split(","))] if found else []


def operands(rest: str) -> list[str]:
    """Operand names of an instruction: the %names inside its parentheses."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return re.findall(r"%([\w.\-]+)", rest[:i])
    return re.findall(r"%([\w.\-]+)", rest)


def parse(hlo: str) -> tuple[dict, str]:
    """{computation name: [instruction dicts]}, and the entry computation's name."""
    computations, current, entry = {}, None, None
    for line in hlo.splitlines():
        if current is None:
            header = COMPUTATION.match(line)
            if header:
                current = header.group(2)
                computations[current] = []
                entry = current if header.group(1) else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        ins = INSTRUCTION.match(line)
        if ins:
            root, name, type_text, op, rest = ins.groups()
            computations[current].append({"name": name, "type": type_text, "op": op,
                                          "rest": rest, "root": bool(root), "line": line})
    if entry is None:
        raise ValueError("no ENTRY computation: not an HLO module's text")
    return computations, entry


def called(ins: dict, attribute: str = "calls") -> str | None:
    found = re.search(attribute + r"=%([\w.\-]+)", ins["line"])
    return found.group(1) if found else None


def parameter_reads(body: list[dict]) -> dict[int, int]:
    """Bytes a fusion reads of each parameter it slices or updates in place (others: all)."""
    users = defaultdict(list)
    for ins in body:
        for name in operands(ins["rest"]):
            users[name].append(ins)
    reads = {}
    for ins in body:
        if ins["op"] != "parameter":
            continue
        index = int(re.match(r"\s*(\d+)", ins["rest"]).group(1))
        uses = users[ins["name"]]
        if uses and all(u["op"] in ("dynamic-slice", "slice") for u in uses):
            reads[index] = sum(nbytes(u["type"]) for u in uses)
        elif uses and all(u["op"] == "dynamic-update-slice"
                          and operands(u["rest"])[0] == ins["name"] for u in uses):
            reads[index] = 0  # the buffer updated in place
    return reads


def matmul_flops(result_type: str, lhs_type: str, contracting: str) -> int:
    """2 * result elements * contracted size; `contracting`: the lhs's dimensions, "1,2"."""
    lhs = dims(lhs_type)
    k = math.prod(lhs[int(d)] for d in filter(None, contracting.replace('"', "").split(",")))
    return 2 * math.prod(dims(result_type)) * k


def dot_flops(dot: dict, types: dict) -> int:
    """An HLO dot's FLOPs."""
    contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", dot["line"]).group(1)
    return matmul_flops(dot["type"], types[operands(dot["rest"])[0]], contracting)


def library_call_flops(ins: dict, types: dict) -> int:
    """A cuBLAS call's FLOPs, from its backend config's contracting dimensions."""
    found = re.search(r'"lhs_contracting_dimensions":\[([0-9",]*)\]', ins["line"])
    if not found:
        return 0
    return matmul_flops(ins["type"], types[operands(ins["rest"])[0]], found.group(1))


def library_call_output_bytes(type_text: str) -> int:
    """A cuBLAS or cuDNN call's results without the byte buffer that ends its tuple (the
    library's workspace: cuBLASLt's is 4 MiB, mostly untouched)."""
    shapes = SHAPE.findall(type_text)
    if len(shapes) > 1 and shapes[-1][0] in ("s8", "u8"):
        shapes = shapes[:-1]
    return sum(elements(dims) * DTYPE_BYTES[dtype] for dtype, dims in shapes)


def family(ins: dict, computations: dict) -> str:
    op = ins["op"]
    if op == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', ins["line"]).group(1)
        if "fmha" in target:
            return "attention (cuDNN)"
        if "gemm" in target or "matmul" in target:
            return "matmul (cuBLAS)"
        return f"custom-call {target}"
    if op == "fusion":
        if "__triton_gemm" in ins["line"] or ins["name"].startswith("gemm_fusion"):
            return "matmul (Triton)"
        if "__cudnn$fusion" in ins["line"]:
            return "matmul (cuDNN fusion)"
        body = computations[called(ins)]
        ops = {i["op"] for i in body}
        root = next(i for i in body if i["root"])
        if "scatter" in ops:
            return "scatter"
        if "gather" in ops:
            return "gather"
        if root["op"] == "dynamic-update-slice":
            return "in-place update"
        if "reduce" in ops:
            return "fusion with a reduction"
        if ops <= DATA_MOVEMENT:
            return "data movement"
        return "elementwise fusion"
    if op in ("copy", "copy-start"):
        return "copy"
    if op.startswith(("all-", "reduce-scatter", "collective-permute")):
        return f"collective: {op.removesuffix('-start')}"
    return op


def kernels(hlo: str) -> list[dict]:
    """The kernels one execution of the module launches, with how many times each runs."""
    computations, entry = parse(hlo)
    types = {i["name"]: i["type"] for body in computations.values() for i in body}
    found = []

    def walk(name: str, times: int):
        for ins in computations[name]:
            op = ins["op"]
            if op in NO_KERNEL or op.endswith("-done"):  # an async op's end: its start ran it
                continue
            if op == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins["line"])
                if not trips:
                    raise ValueError(f"{ins['name']}: a while loop without a known trip count")
                walk(called(ins, "body"), times * int(trips.group(1)))
                continue
            if op in ("call", "conditional"):  # conditionals: every branch counted, an upper bound
                for sub in re.findall(r"(?:to_apply=|calls=|branch_computations=\{)%([\w.\-]+)",
                                      ins["line"]):
                    walk(sub, times)
                continue
            names = operands(ins["rest"])
            written = nbytes(ins["type"])
            fam = family(ins, computations)
            flops = 0
            if op == "fusion":
                body = computations[called(ins)]
                reads = parameter_reads(body)
                read = sum(reads.get(i, nbytes(types.get(n, ""))) for i, n in enumerate(names))
                root = next(i for i in body if i["root"])
                if root["op"] == "dynamic-update-slice":
                    update = operands(root["rest"])[1]
                    written = nbytes(next(i["type"] for i in body if i["name"] == update))
                if fam.startswith("matmul"):
                    body_types = {i["name"]: i["type"] for i in body}
                    flops = sum(dot_flops(i, body_types) for i in body if i["op"] == "dot")
            else:
                read = sum(nbytes(types.get(n, "")) for n in names)
                if op == "custom-call":
                    written = library_call_output_bytes(ins["type"])
                if fam == "matmul (cuBLAS)":
                    flops = library_call_flops(ins, types)
            op_name = re.search(r'op_name="([^"]*)"', ins["line"])
            found.append({"name": ins["name"], "family": fam, "times": times,
                          "bytes": read + written, "flops": flops,
                          "op_name": op_name.group(1) if op_name else ""})

    walk(entry, 1)
    return found


def family_table(found: list[dict], bandwidth: float, peak: float) -> dict[str, dict]:
    """Per family: launches, bytes, FLOPs and roofline seconds, all per execution."""
    table = defaultdict(lambda: {"launches": 0, "bytes": 0, "flops": 0, "roofline_s": 0.0})
    for k in found:
        row = table[k["family"]]
        row["launches"] += k["times"]
        row["bytes"] += k["bytes"] * k["times"]
        row["flops"] += k["flops"] * k["times"]
        row["roofline_s"] += max(k["bytes"] / bandwidth, k["flops"] / peak) * k["times"]
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["roofline_s"]))


def totals(table: dict[str, dict]) -> dict:
    return {key: sum(row[key] for row in table.values())
            for key in ("launches", "bytes", "flops", "roofline_s")}
