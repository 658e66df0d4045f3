"""A character-level tokenizer for the built-in task, built with the `tokenizers` library.

One token per character (printable ASCII plus newline and tab), so guidance lengths count
characters and ``decode(encode(s)) == s`` exactly. No BOS is added when encoding and there
is no chat template: the trainer feeds raw prompts.
"""
from __future__ import annotations

import string

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Printable ASCII without the vertical-space characters other than "\n".
CHARACTERS = tuple(
    dict.fromkeys(string.digits + string.ascii_letters + string.punctuation + " \n\t")
)


def char_vocab() -> dict[str, int]:
    """Special tokens first (ids 0..3), then the characters in a fixed order."""
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}


def build_char_tokenizer(model_max_length: int = 128):
    """A ``transformers.PreTrainedTokenizerFast`` mapping each character to one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=char_vocab(), unk_token=UNK_TOKEN))
    # [\s\S] matches every character, newline included; "isolated" keeps each as a piece.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse joins the pieces with nothing in between (WordLevel's default would add spaces).
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    return tok
