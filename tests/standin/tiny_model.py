"""A tiny but real Hugging Face chat model, built in-process and offline.

`build_tiny_chat_model(path)` writes a complete model directory (config.json, generation_config.json,
model.safetensors, tokenizer.json, tokenizer_config.json, chat template) that loads with
`AutoModelForCausalLM.from_pretrained(path)` and `AutoTokenizer.from_pretrained(path)` with
HF_HUB_OFFLINE=1. The model is a 2-layer Llama (hidden 64, 4 heads, 2 KV heads) with a seeded random
init; the tokenizer is a byte-level BPE trained on the short text below. Same bytes every time.

Run as a script to write one: `python tests/standin/tiny_model.py DIR`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SEED = 1234
MAX_POSITION_EMBEDDINGS = 2048
SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>"]  # ids 0..3

# System / user / assistant turns; unknown roles fail like real templates do.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can still answer a question.
Hello! How are you today? I am fine, thank you. What is the weather like in Chicago?
The cluster has many nodes, and each node has several GPUs. Jobs wait in the queue until
the scheduler finds free resources. A batch script asks for time, memory and a partition.
The server listens on a port and answers requests. Please say hello to the user.
You are a helpful assistant. The user asks, and the assistant answers in plain English.
Language models predict the next token from the tokens before it. Tokens are pieces of words.
One, two, three, four, five, six, seven, eight, nine, ten. Yes, no, maybe, always, never.
<|system|> <|user|> <|assistant|>
"""


def build_tokenizer():
    """A byte-level BPE tokenizer wrapped in PreTrainedTokenizerFast (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_chat_model(path: Path, **sizes) -> Path:
    """Write the tiny chat model to `path` (created if needed) and return `path`; ``sizes``
    override LlamaConfig fields (hidden_size=..., num_hidden_layers=...) for a larger one."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = LlamaConfig(**{
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
        **sizes,
    })
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=_unprintable_tokens(tokenizer),
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    _portable_tokenizer_config(path)
    return path


def _unprintable_tokens(tokenizer) -> list[int]:
    """Ids a random model should never emit: stray UTF-8 bytes, control bytes, <s>/<unk>/<pad>.

    generate() applies generation_config.suppress_tokens, so the (untrained) model's greedy output
    is plain printable ASCII and streams as clean text pieces. EOS stays allowed.
    """
    bad = []
    for token_id in range(len(tokenizer)):
        if token_id == tokenizer.eos_token_id:
            continue
        text = tokenizer.decode([token_id])
        if token_id in tokenizer.all_special_ids or not text or any(
                not (32 <= ord(ch) < 127 or ch == "\n") for ch in text):
            bad.append(token_id)
    return bad


def _portable_tokenizer_config(path: Path) -> None:
    """Make tokenizer_config.json readable by older loaders too.

    transformers 5 writes `"tokenizer_class": "TokenizersBackend"` and keeps the chat template only in
    chat_template.jinja. transformers 4.x (inside the real engine images) does not know that class,
    and TGI's router reads `chat_template` from tokenizer_config.json, so name the class
    PreTrainedTokenizerFast (transformers 5 maps it back) and copy the template in as well.
    """
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_model.py DIR")
    print(build_tiny_chat_model(Path(sys.argv[1])))
