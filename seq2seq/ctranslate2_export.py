"""Export a checkpoint as a CTranslate2 model directory, through CTranslate2's own converter API.

Every model the toolkit trains converts, pre-norm and post-norm alike: the weights fill
CTranslate2's TransformerSpec directly (fused Q/K/V and K/V as its attention layers expect, our
sinusoidal position table as given, the tied output projection), its Converter writes the
directory (model.bin, config.json, the vocabularies) with the quantization asked for, and our
tokenizer goes beside them as tokenizer.json, so that a user turns text into the pieces
CTranslate2 translates:

    tok = tokenizers.Tokenizer.from_file("OUT/tokenizer.json")
    pieces = tok.encode(text, add_special_tokens=False).tokens
    out = ctranslate2.Translator("OUT").translate_batch([pieces], beam_size=5)
    tok.decode([tok.token_to_id(p) for p in out[0].hypotheses[0]])
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seq2seq.checkpoint import CheckpointError, load, model_from_checkpoint
from seq2seq.model import Transformer
from seq2seq.tokenizer import SPECIALS, Vocabularies

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which every norm of ours uses


def export_ctranslate2(checkpoint: str | Path, outdir: str | Path, quantization: str | None = None) -> Path:
    """Write the checkpoint's model as a CTranslate2 directory; -> outdir."""
    from ctranslate2.converters.converter import Converter

    model, vocab = model_from_checkpoint(load(checkpoint), checkpoint)
    if not isinstance(model, Transformer):
        raise CheckpointError(f"{checkpoint}: an ensemble; export its members one by one")

    class _Converter(Converter):
        def _load(self):
            return model_spec(model.float().eval(), vocab)

    out = Path(_Converter().convert(str(outdir), quantization=quantization, force=True))
    vocab.src.hf.save(str(out / "tokenizer.json"))
    if not vocab.joint:
        vocab.tgt.hf.save(str(out / "target_tokenizer.json"))
    return out


def model_spec(model: Transformer, vocab: Vocabularies):
    """CTranslate2's TransformerSpec holding the model's weights and vocabularies."""
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = model.config
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU}[cfg.activation]
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.n_encoder_layers, cfg.n_decoder_layers), cfg.n_heads, pre_norm=cfg.norm == "pre", activation=activation)
    spec.config.layer_norm_epsilon = LAYER_NORM_EPS
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = SPECIALS[3], SPECIALS[1], SPECIALS[2]
    spec.config.decoder_start_token = SPECIALS[cfg.bos_id]

    for stack, embed in ((spec.encoder, model.src_embed), (spec.decoder, model.tgt_embed)):
        embeddings = stack.embeddings if not isinstance(stack.embeddings, list) else stack.embeddings[0]
        embeddings.weight = _np(embed.weight)
        stack.scale_embeddings = True  # tokens * sqrt(d_model), as ours
        stack.position_encodings.encodings = _np(embed.positions)
    if cfg.norm == "pre":  # a pre-norm stack ends with a norm; post-norm has none
        _norm(spec.encoder.layer_norm, model.encoder_norm)
        _norm(spec.decoder.layer_norm, model.decoder_norm)
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder_layers):
        _self_attention(layer_spec.self_attention, layer.self_attn, layer.norm1)
        _feed_forward(layer_spec.ffn, layer.ff, layer.norm2)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder_layers):
        _self_attention(layer_spec.self_attention, layer.self_attn, layer.norm1)
        attention = layer_spec.attention  # cross-attention: query, fused key/value, output
        _linear(attention.linear[0], layer.cross_attn.q_proj)
        _fused(attention.linear[1], [layer.cross_attn.k_proj, layer.cross_attn.v_proj])
        _linear(attention.linear[2], layer.cross_attn.out_proj)
        _norm(attention.layer_norm, layer.norm2)
        _feed_forward(layer_spec.ffn, layer.ff, layer.norm3)
    if model.output_proj is None:
        spec.decoder.projection.weight = _np(model.tgt_embed.weight)
    else:
        _linear(spec.decoder.projection, model.output_proj)

    spec.register_source_vocabulary(_tokens(vocab.src, cfg.src_vocab_size))
    spec.register_target_vocabulary(_tokens(vocab.tgt, cfg.tgt_vocab_size))
    return spec


def _tokens(tokenizer, size: int) -> list[str]:
    return [tokenizer.hf.id_to_token(i) for i in range(size)]


def _np(tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _linear(spec, linear) -> None:
    spec.weight = _np(linear.weight)
    if linear.bias is not None:
        spec.bias = _np(linear.bias)


def _fused(spec, linears) -> None:
    spec.weight = np.concatenate([_np(m.weight) for m in linears])
    if linears[0].bias is not None:
        spec.bias = np.concatenate([_np(m.bias) for m in linears])


def _norm(spec, norm) -> None:
    spec.gamma, spec.beta = _np(norm.weight), _np(norm.bias)


def _self_attention(spec, attention, norm) -> None:
    _fused(spec.linear[0], [attention.q_proj, attention.k_proj, attention.v_proj])
    _linear(spec.linear[1], attention.out_proj)
    _norm(spec.layer_norm, norm)


def _feed_forward(spec, ff, norm) -> None:
    _linear(spec.linear_0, ff.fc1)
    _linear(spec.linear_1, ff.fc2)
    _norm(spec.layer_norm, norm)
