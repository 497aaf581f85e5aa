#!/usr/bin/python3
"""Writes testdata/cleaner_cases.jsonl: texts and what CLIP's reference cleaning makes of
them, for text_cleaner_test.cc.

The reference (openai/CLIP simple_tokenizer.py, ftfy replaced by NFC) is
  text = unicodedata.normalize('NFC', text)
  text = html.unescape(html.unescape(text)).strip()
  text = regex.sub(r'\\s+', ' ', text).strip().lower()
The `regex` module is not installed here; its \\s is the Unicode White_Space property
(its "Space" property alias), spelled out below. Run with Debian's /usr/bin/python3:

  /usr/bin/python3 tests/tokenizer/make_cleaner_cases.py > tests/tokenizer/testdata/cleaner_cases.jsonl
"""

import html
import json
import random
import re
import unicodedata

WHITE_SPACE = re.compile('[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029'
                         '\u202f\u205f\u3000]+')


def clean(text):
  text = unicodedata.normalize('NFC', text)
  text = html.unescape(html.unescape(text)).strip()
  return WHITE_SPACE.sub(' ', text).strip().lower()


# Pieces chosen to reach every branch of the cleaner: entities of all kinds, text that
# NFC reorders, composes, or must leave alone, the casing special cases, and every kind
# of white space str.strip() and \s disagree on.
PIECES = [
    # ASCII
    'a', 'Photo', 'DOG', ' ', '  ', '.', ',', "'", "'S", '1', '42', '&', '#', ';', 'x',
    # HTML references
    '&amp;', '&amp', '&AMP;', '&lt;', '&gt', '&quot;', '&#39;', '&#x27;', '&#X41;',
    '&#0;', '&#13;', '&#128;', '&#x9F;', '&#xD800;', '&#1114112;', '&#x110000;',
    '&#99999999999999999999999;', '&#1;', '&#xFDD0;', '&#x1FFFF;', '&#65', '&#x;', '&#;',
    '&#x1F600;', '&notit;', '&notin;', '&ampx', '&Aacute', '&aacute;', '&Eacute;x',
    '&NotNestedGreaterGreater;', '&CounterClockwiseContourIntegral;', '&amp;lt;',
    '&amp;amp;lt;', '&nbsp;', '&ensp;', '&NewLine;', '&Tab;', '&zwnj;', '&bogus;',
    '&a', '&' + 'x' * 40 + ';', '&lt' + 'é' * 3, '&#x2126;', '&#x212B;',
    # composition, decomposition, ordering
    'e\u0301', 'E\u0301', 'A\u030a', '\u212b', '\u2126', 'a\u0323\u0302', 'a\u0302\u0323',
    '\u1e9b\u0323', 'q\u0307\u0323', '\u0344', '\u0958', '\ufb2c', '\u0f73', '\u0301',
    '\u1100\u1161\u11a8', '\uac00\u11a8', '\u1100\u1161', '\u0b47\u0b3e', '\u00c5',
    '\u0041\u0300\u0316', 'o\u0308\u0304', 'Å', 'ñ', 'n\u0303', 'ü', 'u\u0308',
    # casing
    'Σ', 'ΟΔΟΣ', 'ΑΣ', 'Σ.', "Α'Σ", 'Α\u0345Σ', 'σ', 'İ', 'I\u0307', '\u212a', 'Ω',
    'ẞ', 'ß', 'Ⱥ', '\U00010400', 'ǅ', 'ǈ', 'Ǳ', 'ᾼ', 'ᾈ', 'Ꭰ', 'ꭰ', 'Ａ', 'Ⅻ', 'Ⓐ',
    # white space and its look-alikes
    '\t', '\n', '\r\n', '\x0b', '\x0c', '\x1c', '\x1f', '\x85', '\xa0', '\u1680',
    '\u2003', '\u200a', '\u200b', '\u2028', '\u202f', '\u205f', '\u3000', '\u180e',
    '\ufeff',
    # other scripts and symbols
    '日本語', 'テキスト', 'مرحبا', 'Привет', '😀', '👍🏽', '\U0001f1fa\U0001f1f8', '€',
    '\x00', '\x7f', '\ufffd',
]

HANDPICKED = [
    '', ' ', '   \t\n', 'A Photo of a DOG.', '&lt;tag&gt; &amp;&amp;', 'line1\nline2\tTab',
    'ΟΔΥΣΣΕΥΣ', 'ΟΔΟΣ ΣΟΦΟΣ.', 'Σ', ' Σ ', 'aΣb', 'aΣ', 'a\u00adΣ', 'A\u0300Σ',
    'İSTANBUL', '\x1c a \x1c', '\x1ca\x1c', '\xa0a\xa0', 'a\u200bb', '&amp;#39;',
    '&#38;#39;', '&#x26;lt;', '&&amp;&', '&;', '&#', '&#x', 'x' * 100,
]


def main():
  rng = random.Random(20240611)
  texts = list(HANDPICKED)
  while len(texts) < 800:
    texts.append(''.join(rng.choice(PIECES) for _ in range(rng.randint(1, 8))))
  for text in texts:
    print(json.dumps({'text': text, 'clean': clean(text)}, ensure_ascii=True))


if __name__ == '__main__':
  main()
