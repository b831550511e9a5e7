"""The BERT model: an encoder of stacked blocks (one `lax.scan` on CPU, unrolled on GPU/TPU:
`model.scan_layers`), plus optional heads.

Heads: masked-LM (dense + GELU + LayerNorm + decoder tied to the word embeddings + bias), with a
sparse mode that computes vocabulary logits only at selected positions; a tanh pooler over [CLS]
feeding the NSP/SOP head (2-way) and the GLUE classifier/regressor. Model code never imports
training, data or I/O code. `param_count` and `flops_per_token` serve logging and MFU.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from bertjax.attention import describe_attention
from bertjax.config import ModelConfig
from bertjax.layers import Block, Dense, Embeddings, LayerNorm, split_key, whole
from bertjax.ops import dropout, einsum_f32


class Encoder(eqx.Module):
    embeddings: Embeddings
    blocks: Block  # one Block whose every array has a leading [num_layers] axis
    final_norm: LayerNorm | None  # pre-LN only: normalises the residual stream's output
    num_layers: int = eqx.field(static=True)
    scan_layers: bool = eqx.field(static=True)
    remat: bool = eqx.field(static=True)

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray):
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size must be resolved (from the tokenizer) first")
        k_emb, k_blocks = jax.random.split(key)
        self.embeddings = Embeddings(cfg.vocab_size, cfg.max_position_embeddings,
                                     cfg.type_vocab_size, cfg.hidden_size, cfg.layer_norm_eps,
                                     cfg.dropout, key=k_emb, position_init=cfg.position_init)
        pre = cfg.norm == "pre"

        def make_block(k):
            return Block(cfg.hidden_size, cfg.num_heads, cfg.intermediate_size,
                         cfg.layer_norm_eps, pre, cfg.dropout, cfg.attention_dropout, key=k,
                         attention=cfg.attention, gelu=cfg.gelu)

        self.blocks = eqx.filter_vmap(make_block)(jax.random.split(k_blocks, cfg.num_layers))
        self.final_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps) if pre else None
        self.num_layers = cfg.num_layers
        # On a GPU the scan copies every activation it keeps into a [layers, ...] stack and
        # back (session 5's H100 trace: 8.3 of 52.7 ms; statically a third of a BERT-base
        # step's bytes, log.md, session 45); on CPU its compile time wins.
        self.scan_layers = (jax.default_backend() == "cpu" if cfg.scan_layers is None
                            else cfg.scan_layers)
        # On XLA:CPU the scan's stored activations cost more than recomputing them: stacking
        # them zero-fills and copies large buffers (a quarter of a tiny gradient; log.md).
        self.remat = jax.default_backend() == "cpu" if cfg.remat is None else cfg.remat

    def __call__(self, input_ids: Int[Array, "batch seq"], token_type_ids: Int[Array, "batch seq"],
                 attention_mask: Bool[Array, "batch seq"], *,
                 key: PRNGKeyArray | None = None) -> Float[Array, "batch seq embed"]:
        k_emb, k_blocks = split_key(key, 2)
        x = self.embeddings(input_ids, token_type_ids, key=k_emb)
        params, static = eqx.partition(self.blocks, eqx.is_array)
        keys = None if k_blocks is None else jax.random.split(k_blocks, self.num_layers)

        def layer(x, layer_params, layer_key):
            return eqx.combine(layer_params, static)(x, attention_mask, key=layer_key)

        if self.remat:
            layer = jax.checkpoint(layer)
        if self.scan_layers:
            # One traced block for all layers: compile time does not grow with depth.
            x, _ = jax.lax.scan(lambda h, xs: (layer(h, *xs), None), x, (params, keys))
        else:
            for i in range(self.num_layers):
                layer_params = jax.tree.map(lambda a, i=i: a[i], params)
                x = layer(x, layer_params, None if keys is None else keys[i])
        return x if self.final_norm is None else self.final_norm(x)


def select_positions(hidden: Float[Array, "batch seq embed"], positions: Int[Array, "batch preds"]
                     ) -> Float[Array, "batch preds embed"]:
    """hidden[b, positions[b]] as a batched matmul with one-hot rows (exact: one term each;
    HIGHEST precision so that f32 states are not rounded to TF32 or bf16 on GPU or TPU). Its
    gradient is a matmul too; a gather's is a scatter-add, and XLA:GPU laid that scatter's
    [batch, seq, embed] buffer out seq-minor, then the whole residual stream with it, which
    added transposes and f32 copies to every LayerNorm's backward pass (log.md, session 45)."""
    one_hot = positions[..., None] == jnp.arange(hidden.shape[1])
    return jnp.einsum("bps,bse->bpe", one_hot.astype(hidden.dtype), hidden,
                      precision=jax.lax.Precision.HIGHEST)


class MLMHead(eqx.Module):
    transform: Dense
    norm: LayerNorm
    bias: jax.Array  # [vocab]; the decoder matrix is the tied word embedding
    approximate_gelu: bool = eqx.field(static=True)  # the tanh GELU (model.gelu), post-LN only

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray):
        self.transform = Dense(cfg.hidden_size, cfg.hidden_size, key=key)
        self.norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.bias = jnp.zeros((cfg.vocab_size,), jnp.float32)
        # As Hugging Face's heads: BERT's GELU is hidden_act's, RoBERTa-PreLayerNorm's (the
        # pre-LN export) always the exact one.
        self.approximate_gelu = cfg.gelu == "tanh" and cfg.norm == "post"

    def __call__(self, h: Float[Array, "batch preds embed"],
                 word: Float[Array, "vocab embed"]) -> Float[Array, "batch preds vocab"]:
        h = self.norm(jax.nn.gelu(self.transform(h), approximate=self.approximate_gelu))
        # Logits leave in f32: the softmax cross-entropy over the vocabulary is done in f32.
        # As one 2-D matmul: XLA:CPU runs "bpe,ve->bpv" and its gradient ~1.4-2x slower (log.md).
        logits = einsum_f32("ne,ve->nv", h.reshape(-1, h.shape[-1]), whole(word).astype(h.dtype))
        return logits.reshape(*h.shape[:-1], -1) + whole(self.bias).astype(jnp.float32)


class Bert(eqx.Module):
    """Encoder plus the heads a task needs: `mlm`, `nsp` (NSP or SOP), `classifier` (GLUE)."""

    encoder: Encoder
    mlm: MLMHead | None
    pooler: Dense | None
    nsp: Dense | None
    classifier: Dense | None
    classifier_dropout: float = eqx.field(static=True)
    pooling: str = eqx.field(static=True)

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray, mlm: bool = True,
                 nsp: bool = False, num_labels: int = 0, classifier_dropout: float = 0.1,
                 pooling: str = "cls", pooled: bool = False):
        k_enc, k_mlm, k_pool, k_nsp, k_cls = jax.random.split(key, 5)
        self.encoder = Encoder(cfg, key=k_enc)
        self.mlm = MLMHead(cfg, key=k_mlm) if mlm else None
        pooled = pooled or nsp or num_labels > 0  # pooled alone: a bare HF BertModel's pooler
        self.pooler = Dense(cfg.hidden_size, cfg.hidden_size, key=k_pool) if pooled else None
        self.nsp = Dense(cfg.hidden_size, 2, key=k_nsp) if nsp else None
        self.classifier = Dense(cfg.hidden_size, num_labels, key=k_cls) if num_labels else None
        self.classifier_dropout = classifier_dropout
        self.pooling = pooling

    def __call__(self, input_ids: Int[Array, "batch seq"], token_type_ids: Int[Array, "batch seq"],
                 attention_mask: Bool[Array, "batch seq"], *,
                 key: PRNGKeyArray | None = None) -> Float[Array, "batch seq embed"]:
        """Final hidden states; feed them to the head methods below."""
        return self.encoder(input_ids, token_type_ids, attention_mask, key=key)

    def mlm_logits(self, hidden: Float[Array, "batch seq embed"],
                   positions: Int[Array, "batch preds"] | None = None,
                   ) -> Float[Array, "batch _ vocab"]:
        """Vocabulary logits (f32) at `positions` (sparse mode) or at every position."""
        if positions is not None:
            hidden = select_positions(hidden, positions)
        return self.mlm(hidden, self.encoder.embeddings.word)

    def pooled(self, hidden: Float[Array, "batch seq embed"],
               attention_mask: Bool[Array, "batch seq"] | None = None,
               ) -> Float[Array, "batch embed"]:
        """tanh(dense(.)) of the [CLS] state or, with `pooling="mean"`, of the mean over the
        real tokens (an MLM-only encoder never trains its [CLS] state; log.md, session 7)."""
        if self.pooling == "cls":
            return jnp.tanh(self.pooler(hidden[:, 0]))
        if attention_mask is None:
            raise ValueError("pooling='mean' needs the attention mask")
        return jnp.tanh(self.pooler(masked_mean(hidden, attention_mask)))

    def pair_logits(self, hidden: Float[Array, "batch seq embed"]) -> Float[Array, "batch 2"]:
        """NSP / SOP logits (f32): index 0 = is next / in order, 1 = random / swapped."""
        return self.nsp(self.pooled(hidden)).astype(jnp.float32)

    def classify(self, hidden: Float[Array, "batch seq embed"],
                 attention_mask: Bool[Array, "batch seq"] | None = None, *,
                 key: PRNGKeyArray | None = None) -> Float[Array, "batch labels"]:
        """GLUE logits (or one regression output) from the pooled state, in f32; the mask is
        needed for `pooling="mean"`."""
        pooled = dropout(self.pooled(hidden, attention_mask), self.classifier_dropout, key)
        return self.classifier(pooled).astype(jnp.float32)


def masked_mean(hidden: Float[Array, "batch seq embed"],
                attention_mask: Bool[Array, "batch seq"]) -> Float[Array, "batch embed"]:
    """Mean of each row's states over its real (unmasked) tokens."""
    weights = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1)


def attention_summary(cfg: ModelConfig, compute_dtype: str) -> str:
    """The attention path of training and evaluation steps, in words (for the run log)."""
    return describe_attention(cfg.attention, compute_dtype, cfg.hidden_size // cfg.num_heads,
                              cfg.attention_dropout)


def num_labels(model: Bert) -> int:
    """The classifier's outputs (GLUE classes, or 1 for regression); 0 without a classifier."""
    return model.classifier.weight.shape[-1] if model.classifier is not None else 0


def new_bert(cfg: ModelConfig, *, key: PRNGKeyArray, **heads) -> Bert:
    """`Bert(cfg, key=key, **heads)`, initialised by one compiled program. Built op by op, every
    initializer is compiled once per weight shape: 40-odd small programs at each start (BERT-base
    on a 2-core CPU: 3.1 s against 1.7 s as one program). The weights are the same, bit for bit
    under XLA's default flags (at -O0 fusion moves the last bit of some)."""
    return eqx.filter_jit(lambda k: Bert(cfg, key=k, **heads))(key)


def param_count(model: eqx.Module) -> int:
    """Number of parameters (tied weights counted once, as they are stored once)."""
    leaves = jax.tree.leaves(model)  # arrays, or ShapeDtypeStructs from eqx.filter_eval_shape
    return sum(x.size for x in leaves if hasattr(x, "dtype") and jnp.issubdtype(x.dtype,
                                                                                 jnp.floating))


def flops_per_token(cfg: ModelConfig, seq_len: int, predictions: int | None = None) -> float:
    """Training FLOPs per input token (forward + backward = 3x forward; 2 FLOPs per MAC).

    Counts the matmuls (Kaplan et al. 2020 style): per layer QKV/out projections and the
    feed-forward, attention scores and values (which grow with `seq_len`), and the MLM head,
    evaluated at `predictions` positions per sequence when sparse, else at every token.
    """
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    per_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * seq_len * h
    head_tokens = 1.0 if predictions is None else predictions / seq_len
    head = 2 * (h * h + h * cfg.vocab_size) * head_tokens
    return 3.0 * (layers * per_layer + head)
