"""seq2seq: encoder-decoder transformer for translation, with cached incremental decoding."""
from seq2seq.cache import KVCache
from seq2seq.config import ModelConfig
from seq2seq.model import Transformer

__all__ = ["KVCache", "ModelConfig", "Transformer"]
