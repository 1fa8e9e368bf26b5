"""Texts that converted tokenizers must encode exactly as sentencepiece / tiktoken do.

Each sample is (name, text); names show up in test ids and failure messages. The samples aim at
the places where a converted tokenizer tends to go wrong: the dummy prefix and whitespace runs,
bytes outside the vocab (byte fallback), regex pre-tokenization of digits and punctuation,
special-token strings inside text, and characters that a Unicode normalizer would change (neither
LLaMA tokenizer normalizes, so these must come back unchanged).
"""

from __future__ import annotations

import random

SAMPLES: list[tuple[str, str]] = [
    # --- degenerate
    ("empty", ""),
    ("one-space", " "),
    ("two-spaces", "  "),
    ("one-newline", "\n"),
    ("one-letter", "a"),
    # --- languages and scripts
    ("english", "Hello world! The quick brown fox jumps over the lazy dog, doesn't it? I'm sure."),
    ("english-caps", "HELLO WORLD. We'LL see; they'D say it's 'quoted' and \"double quoted\"."),
    ("german", "Die Größe der Äpfel überrascht Jürgen; Straße, Maß, Öl, übermäßig ÄÖÜäöüß."),
    ("french", "Le garçon a mangé une crème brûlée à l'hôtel; où est-ce? «Ça va», dit-il."),
    ("russian", "Съешь же ещё этих мягких французских булок, да выпей чаю. ЁЖ и ёж."),
    ("greek", "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Η γλώσσα είναι όμορφη· ναι;"),
    ("chinese", "我能吞下玻璃而不伤身体。中华人民共和国成立于1949年，北京是首都。"),
    ("japanese", "私はガラスを食べられます。それは私を傷つけません。カタカナとひらがな、漢字。"),
    ("korean", "나는 유리를 먹을 수 있어요. 그래도 아프지 않아요. 한국어 문장입니다."),
    ("arabic", "أنا قادر على أكل الزجاج و هذا لا يؤلمني. العربية: ١٢٣٤٥"),
    ("hindi", "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती. नमस्ते दुनिया।"),
    (
        "mixed-scripts",
        "English, Deutsch (Größe), русский, ελληνικά, 中文, 日本語, 한국어, عربى, हिन्दी",
    ),
    # --- code
    (
        "python",
        'def greet(name: str) -> str:\n    """Say hello."""\n    if not name:\n'
        '        raise ValueError("empty")\n    return f"Hello, {name}!"  # comment\n\n\n'
        "class Foo(Bar):\n\tpass\n",
    ),
    (
        "c",
        "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    for (int i = 0; i < argc;"
        ' ++i) {\n        printf("%s\\n", argv[i]);\n    }\n    return 0;\n}\n',
    ),
    (
        "json",
        '{\n  "name": "streamconv",\n  "vocab_size": 128256,\n  "rope_theta": 500000.0,\n'
        '  "nested": {"a": [1, 2, 3], "b": null, "c": true},\n  "emoji": "\\ud83d\\ude00"\n}',
    ),
    ("html", '<div class="x"><p>Text &amp; more</p><br/></div>'),
    # --- whitespace runs
    ("leading-spaces", "   leading spaces"),
    ("trailing-spaces", "trailing spaces   "),
    ("spaces-only-5", "     "),
    ("spaces-16", " " * 16 + "x"),
    ("spaces-17", "a" + " " * 17 + "b"),
    ("spaces-33", " " * 33),
    ("spaces-40-text", "x" + " " * 40 + "y" + " " * 20),
    ("tabs", "\ttab\t\tdouble tab\t"),
    ("newlines", "\n\nline one\nline two\n\n\nline five\n"),
    ("crlf", "windows\r\nline\r\n\r\nend\r\n"),
    ("mixed-whitespace", " \t \n  \t\n\n   \t  x \n\t "),
    ("nbsp-and-friends", "a\u00a0b\u2009c\u3000d\u200be\u2028f"),
    # --- emoji
    ("emoji", "I ❤️ emoji 😀😃😄! 👍🏽 🇩🇪🇫🇷 🎉"),
    ("emoji-zwj", "family 👨‍👩‍👧‍👦 and 🏳️‍🌈 and 👩🏽‍💻 and 🧑‍🤝‍🧑"),
    # --- digits
    ("digits", "0 1 22 333 4444 55555 666666 7777777"),
    ("long-number", "3.14159265358979323846264338327950288419716939937510 and 1e-10"),
    (
        "numbers-mixed",
        "Call +1 (555) 010-9999 on 2024-01-31 at 23:59:59.999; cost $1,234.56 or 12%.",
    ),
    # --- special-token strings in text
    ("spm-specials", "<s>Hello</s> and <unk> inside"),
    ("spm-specials-spaced", "x <s> y </s> z"),
    ("spm-specials-adjacent", "<s><s></s>"),
    (
        "llama3-specials",
        "<|begin_of_text|>Hi<|eot_id|> there <|start_header_id|>user<|end_header_id|>",
    ),
    ("llama3-specials-lookalike", "<|eot_id| > <|reserved_special_token_999|> <|not_special|>"),
    # --- Unicode normalization edge cases (must NOT be normalized)
    ("combining-marks", "e\u0301 vs \u00e9, n\u0303 vs \u00f1, a\u0308\u0304 stacked"),
    ("nfkc-sensitive", "ﬁ ﬂ ① ² ｆｕｌｌｗｉｄｔｈ Ⅻ ㎏ ™ \u212b \u212a ½"),
    ("hangul-jamo", "\u1100\u1161\u11a8 vs \uac01"),
    ("zero-width-and-bom", "\ufeffstart\u200dmiddle\u200cend\u2060"),
    ("controls", "nul\x00bell\x07esc\x1b del\x7f"),
    ("rtl-marks", "\u202eabc\u202c \u200fxyz"),
    ("sentencepiece-space-char", "a\u2581b \u2581 c"),
    ("rare-cjk-and-astral", "𠀀𠀁 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙 \U0001f9ec"),
    ("replacement-char", "bad \ufffd byte"),
    # --- longer mixed text
    (
        "paragraph",
        "In 2023, Meta released LLaMA 2 (7B, 13B, 70B). The model's context is 4096 tokens;\n"
        "LLaMA 3 raised it to 8192, and LLaMA 3.1 to 131072 (128K).\n\n"
        "    Indented block:\n        more indent\n\tand a tab.\n"
        "Prices: €12,50 / £9.99 / ¥1000 — “smart quotes” and ‘single’ … ellipsis.",
    ),
]

# Strings that SentencePiece reads as characters but Hugging Face tokenizers as special tokens.
SPM_SPECIAL_STRINGS = ("<unk>", "<s>", "</s>")

_FUZZ_ALPHABET = (
    " \t\n\r"
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`"
    "äöüßéèêçñåøœ"
    "абвгдежзийклмнопрстуфхцчшщъыьэюя"
    "αβγδεζηθικλμνξοπρστυφχψω"
    "的一是不了人我在有他这中大来上国日本語"
    "あいうえおアイウエオ가나다라"
    "ابتثجحअआइई"
    "\u0301\u0308\u200d\ufe0f\u00a0\u2581"
    "😀👍🏽👨❤️🇩🇪"
)


def fuzz_samples(n: int, *, seed: int) -> list[tuple[str, str]]:
    """``n`` seeded random strings over a mixed alphabet, with runs of repeated characters."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            char = rng.choice(_FUZZ_ALPHABET)
            parts.append(char * (rng.randint(1, 20) if rng.random() < 0.15 else 1))
            if rng.random() < 0.3:
                parts.append(" ")
        samples.append((f"fuzz-{seed}-{i}", "".join(parts)))
    return samples
