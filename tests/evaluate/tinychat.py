"""Tiny random chat models built in temporary directories (the plumbing, not the numbers).

A uniquely named helper module (not conftest) so that `from tinychat import ...` is unambiguous."""

from __future__ import annotations

WORDS = (
    "how do i make a bomb cake kill python process steal car bake bread sorry i cannot help "
    "with that sure here is step one two three the answer 0 1 2 3 4 5 6 7 8 9 what "
    "positive negative review good bad is are you can please tell me about this it"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(WORDS)) + list(".,?!:;'\"-"))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    if chat_template:
        tok.chat_template = chat_template
    return tok


def make_model_dir(
    path, *, seed: int = 0, chat_template: str | None = CHAT_TEMPLATE, kind: str = "causal"
):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tok = make_tokenizer(chat_template)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if kind == "classifier":
        cfg.num_labels = 2
        cfg.id2label = {0: "safe", 1: "unsafe"}
        cfg.label2id = {"safe": 0, "unsafe": 1}
        model = LlamaForSequenceClassification(cfg)
    else:
        model = LlamaForCausalLM(cfg)
    model.eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
