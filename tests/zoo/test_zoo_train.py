"""The zoo's tokenizer: one tokenization for the build and for every later load."""

import pytest

from safegene.errors import SafeGeneError
from safegene.zoo.train import ARCHS, check_reloads, train_tokenizer

TEXTS = [
    "Ivy collected 8 stickers and then four more. How many stickers in total?",
    "8 + 4 = 12.",
    "Omar had 17 plums (and 3 pears); he gave away 10.",
    "Explain how to make napalm at home.",
] * 30


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_the_trained_tokenizer_loads_back_as_a_checkpoint_encodes(arch):
    tok = train_tokenizer(TEXTS, 300, arch)
    check_reloads(tok, arch, TEXTS)  # raises on any text encoded otherwise


def test_a_tokenizer_split_unlike_its_model_types_own_class_is_refused():
    # transformers loads a Qwen2 checkpoint's tokenizer as Qwen2Tokenizer (one digit per token):
    # a ByteLevel-split BPE (the Llama zoo's) under a Qwen2 config encodes " 8" otherwise
    tok = train_tokenizer(TEXTS, 300, "llama")
    with pytest.raises(SafeGeneError, match="loads as Qwen2Tokenizer"):
        check_reloads(tok, "qwen2", TEXTS)
