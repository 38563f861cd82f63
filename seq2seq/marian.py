"""Export a checkpoint as a Hugging Face MarianMTModel directory: config.json, model.safetensors,
generation_config.json and a tokenizer that AutoTokenizer loads.

Three Marian conventions differ from ours, and the export maps each exactly:
- Channels. Marian's sinusoidal table holds all sines, then all cosines; ours interleaves them as
  in the paper. Every weight that reads or writes the residual stream has its model dimension
  reordered, so the network computes the same function and Marian's own table is the right one.
- Start token. Marian decoders start from the zero embedding of <pad>; ours from <s>. The <s>
  embedding (scaled) is folded into row 0 of the decoder's position table, which only the start
  token ever reads, and the exported <pad> row is zero.
- Vocabulary order. Marian (and CTranslate2's converter, which drops the last row) keeps <pad>
  last. When both vocabularies have one size, ids move down by one and <pad> goes last; the
  exported tokenizer uses the same ids.

Shapes: D d_model, V vocabulary.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from seq2seq.checkpoint import load, model_from_checkpoint
from seq2seq.config import ModelConfig
from seq2seq.embedding import sinusoidal_table
from seq2seq.model import Transformer
from seq2seq.tokenizer import SPECIALS, Tokenizer

MARIAN_ACTIVATIONS = {"relu": "relu", "gelu": "gelu"}  # ours -> transformers' ACT2FN name (exact erf GELU)


class ExportError(ValueError):
    """The model cannot be expressed in the target format; the message says why."""


def unsupported(cfg: ModelConfig) -> list[str]:
    """Why Marian cannot express this model; empty when it can."""
    reasons = []
    if cfg.norm != "post":
        reasons.append(f"norm={cfg.norm!r} (Marian layers normalise after the residual add, with no final norm: needs 'post')")
    if cfg.activation not in MARIAN_ACTIVATIONS:
        reasons.append(f"activation={cfg.activation!r} (Marian supports {', '.join(MARIAN_ACTIVATIONS)})")
    if cfg.d_model % 2:
        reasons.append(f"d_model={cfg.d_model} is odd (Marian's position table splits it in two halves)")
    return reasons


def channel_order(d_model: int) -> Tensor:
    """(D,) index: Marian channel j holds our channel order[j] (even channels = sines, then odd = cosines)."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def moves_pad_last(cfg: ModelConfig) -> bool:
    """Marian has one pad id for both vocabularies, so <pad> can go last only when their sizes agree."""
    return cfg.src_vocab_size == cfg.tgt_vocab_size


def token_order(cfg: ModelConfig, side: str = "tgt") -> Tensor:
    """(V,) index: exported token j is our token order[j]."""
    size = cfg.tgt_vocab_size if side == "tgt" else cfg.src_vocab_size
    ids = list(range(size))
    if moves_pad_last(cfg):
        ids.remove(cfg.pad_id)
        ids.append(cfg.pad_id)
    return torch.tensor(ids)


def exported_id(cfg: ModelConfig, token: int) -> int:
    """Our token id -> its id in the export."""
    if not moves_pad_last(cfg):
        return token
    return cfg.tgt_vocab_size - 1 if token == cfg.pad_id else token - (token > cfg.pad_id)


def marian_state_dict(model: Transformer) -> dict[str, Tensor]:
    """Our weights under MarianMTModel's names, with the residual channels reordered."""
    cfg = model.config
    order = channel_order(cfg.d_model)
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {}

    def reads(name: str, target: str) -> None:  # Linear reading the residual stream: permute inputs
        out[f"{target}.weight"] = ours[f"{name}.weight"][:, order].contiguous()
        out[f"{target}.bias"] = ours[f"{name}.bias"].clone()

    def writes(name: str, target: str) -> None:  # Linear writing the residual stream: permute outputs
        out[f"{target}.weight"] = ours[f"{name}.weight"][order].contiguous()
        out[f"{target}.bias"] = ours[f"{name}.bias"][order].contiguous()

    def norm(name: str, target: str) -> None:
        out[f"{target}.weight"] = ours[f"{name}.weight"][order].contiguous()
        out[f"{target}.bias"] = ours[f"{name}.bias"][order].contiguous()

    def attention(name: str, target: str) -> None:
        for proj in ("q_proj", "k_proj", "v_proj"):
            reads(f"{name}.{proj}", f"{target}.{proj}")
        writes(f"{name}.out_proj", f"{target}.out_proj")

    def feed_forward(name: str, target: str) -> None:
        reads(f"{name}.fc1", f"{target}.fc1")
        writes(f"{name}.fc2", f"{target}.fc2")

    for i in range(cfg.n_encoder_layers):
        ours_l, hf_l = f"encoder_layers.{i}", f"model.encoder.layers.{i}"
        attention(f"{ours_l}.self_attn", f"{hf_l}.self_attn")
        norm(f"{ours_l}.norm1", f"{hf_l}.self_attn_layer_norm")
        feed_forward(f"{ours_l}.ff", hf_l)
        norm(f"{ours_l}.norm2", f"{hf_l}.final_layer_norm")
    for i in range(cfg.n_decoder_layers):
        ours_l, hf_l = f"decoder_layers.{i}", f"model.decoder.layers.{i}"
        attention(f"{ours_l}.self_attn", f"{hf_l}.self_attn")
        norm(f"{ours_l}.norm1", f"{hf_l}.self_attn_layer_norm")
        attention(f"{ours_l}.cross_attn", f"{hf_l}.encoder_attn")
        norm(f"{ours_l}.norm2", f"{hf_l}.encoder_attn_layer_norm")
        feed_forward(f"{ours_l}.ff", hf_l)
        norm(f"{ours_l}.norm3", f"{hf_l}.final_layer_norm")

    ids = token_order(cfg)
    tgt = ours["tgt_embed.tokens.weight"][ids][:, order].contiguous()
    src = tgt if cfg.share_embeddings else ours["src_embed.tokens.weight"][token_order(cfg, "src")][:, order].contiguous()
    pad = exported_id(cfg, cfg.pad_id)
    start = tgt[exported_id(cfg, cfg.bos_id)] * cfg.d_model**0.5
    tgt[pad] = 0.0  # the start token's embedding; pad positions are never attended to, so nothing else reads it
    src[pad] = 0.0
    if cfg.share_embeddings:
        out["model.shared.weight"] = tgt
    out["model.encoder.embed_tokens.weight"] = src.clone()
    out["model.decoder.embed_tokens.weight"] = tgt.clone()
    # The output layer reads the residual stream too; tied, it is the target table (its pad row
    # is then zero: pad is never emitted, as generation_config bans it).
    out["lm_head.weight"] = tgt.clone() if cfg.tie_output else ours["output_proj.weight"][ids][:, order].contiguous()
    out["final_logits_bias"] = torch.zeros(1, cfg.tgt_vocab_size)
    positions = sinusoidal_table(cfg.max_positions, cfg.d_model)[:, order].contiguous()  # = Marian's own table
    out["model.encoder.embed_positions.weight"] = positions
    decoder_positions = positions.clone()
    decoder_positions[0] += start  # Marian starts from a zero embedding at position 0; ours from <s>
    out["model.decoder.embed_positions.weight"] = decoder_positions
    return out


def marian_config(cfg: ModelConfig) -> dict:
    """config.json for transformers' MarianConfig."""
    return {
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": cfg.src_vocab_size,
        "decoder_vocab_size": cfg.tgt_vocab_size,
        "share_encoder_decoder_embeddings": cfg.share_embeddings,
        "tie_word_embeddings": cfg.tie_output,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.n_encoder_layers,
        "decoder_layers": cfg.n_decoder_layers,
        "encoder_attention_heads": cfg.n_heads,
        "decoder_attention_heads": cfg.n_heads,
        "encoder_ffn_dim": cfg.d_ff,
        "decoder_ffn_dim": cfg.d_ff,
        "activation_function": MARIAN_ACTIVATIONS[cfg.activation],
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attn_dropout,
        "activation_dropout": cfg.dropout,  # ours drops the feed-forward hidden layer at the same rate
        "max_position_embeddings": cfg.max_positions,
        "scale_embedding": True,  # tokens * sqrt(d_model), as ours
        "normalize_before": False,
        "pad_token_id": exported_id(cfg, cfg.pad_id),
        "bos_token_id": exported_id(cfg, cfg.bos_id),
        "eos_token_id": exported_id(cfg, cfg.eos_id),
        "decoder_start_token_id": exported_id(cfg, cfg.pad_id),  # zero embedding + folded <s>: see above
        "forced_eos_token_id": exported_id(cfg, cfg.eos_id),
        "is_encoder_decoder": True,
        "use_cache": True,
    }


def generation_config(cfg: ModelConfig) -> dict:
    """Defaults for generate() that match seq2seq's search rules: never emit PAD or BOS, EOS at the budget."""
    pad, bos, eos = (exported_id(cfg, t) for t in (cfg.pad_id, cfg.bos_id, cfg.eos_id))
    return {
        "decoder_start_token_id": pad,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "forced_eos_token_id": eos,
        "bad_words_ids": [[pad], [bos]],
        "max_length": cfg.max_positions,
        "num_beams": 4,
    }


def renumbered(tokenizer: Tokenizer, new_id) -> str:
    """Our tokenizer's JSON with every token id passed through new_id."""
    data = json.loads(tokenizer.to_str())
    model = data["model"]
    if isinstance(model["vocab"], dict):  # BPE, WordLevel, WordPiece: token -> id
        model["vocab"] = {token: new_id(i) for token, i in model["vocab"].items()}
    else:  # Unigram: [piece, score] in id order
        pieces = [None] * len(model["vocab"])
        for i, piece in enumerate(model["vocab"]):
            pieces[new_id(i)] = piece
        model["vocab"] = pieces
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id(model["unk_id"])
    for token in data.get("added_tokens") or []:
        token["id"] = new_id(token["id"])
    return json.dumps(data, ensure_ascii=False)


def write_tokenizer(tokenizer: Tokenizer, folder: Path, cfg: ModelConfig) -> None:
    """tokenizer.json (ours with the export's ids, plus a post-processor that appends EOS as our
    encoder input does) and tokenizer_config.json, so AutoTokenizer.from_pretrained(folder) loads it."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    pad, bos, eos, unk = SPECIALS
    hf = HFTokenizer.from_str(renumbered(tokenizer, lambda i: exported_id(cfg, i)))
    hf.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A $B {eos}", special_tokens=[(eos, hf.token_to_id(eos))]
    )
    folder.mkdir(parents=True, exist_ok=True)
    hf.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": pad, "bos_token": bos, "eos_token": eos, "unk_token": unk,
        "model_max_length": cfg.max_positions - 1,  # one position is the EOS the post-processor adds
        "clean_up_tokenization_spaces": False,  # decoding must give back the bytes, spaces included
    }, indent=2) + "\n", encoding="utf-8")


def export_marian(checkpoint: str | Path, outdir: str | Path) -> Path:
    """Write a MarianMTModel directory for a checkpoint; ExportError names what Marian cannot express.

    A separate target vocabulary goes to OUTDIR/target_tokenizer (AutoTokenizer loads it too).
    """
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ExportError("the hf-marian export writes safetensors: pip install safetensors (or the 'export' extra)") from None

    ckpt = load(checkpoint)
    if "members" in ckpt:
        raise ExportError(f"{checkpoint}: is an ensemble of {len(ckpt['members'])} models; Marian holds one: export a member's checkpoint")
    model, vocab = model_from_checkpoint(ckpt, checkpoint)
    reasons = unsupported(model.config)
    if reasons:
        raise ExportError(f"{checkpoint}: Marian cannot express this model: {'; '.join(reasons)}")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    save_file(marian_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(marian_config(cfg), indent=2) + "\n", encoding="utf-8")
    (out / "generation_config.json").write_text(json.dumps(generation_config(cfg), indent=2) + "\n", encoding="utf-8")
    write_tokenizer(vocab.src, out, cfg)
    if not vocab.joint:
        write_tokenizer(vocab.tgt, out / "target_tokenizer", cfg)
    return out


