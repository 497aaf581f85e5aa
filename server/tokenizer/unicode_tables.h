#ifndef CLIPSERVE_SERVER_TOKENIZER_UNICODE_TABLES_H_
#define CLIPSERVE_SERVER_TOKENIZER_UNICODE_TABLES_H_

#include <cstddef>
#include <cstdint>

// Internal to the tokenizer: the data unicode_text.cc and html_unescape.cc read. The
// definitions live in unicode_tables.cc, which gen_unicode_tables.py writes from Debian's
// CPython so that normalization, lower-casing, whitespace and HTML entities agree with
// the Python reference tokenizer. Every array is sorted by its first field (entity names
// by byte order) for binary search; all are immutable, so any thread may read them.
namespace clipserve::unicode_tables {

// Inclusive range of code points.
struct CodePointRange {
  uint32_t first;
  uint32_t last;
};

// Canonical_Combining_Class of every code point in [first, last]; absent means 0.
struct CombiningClassRange {
  uint32_t first;
  uint32_t last;
  uint8_t combining_class;
};

// One level of a canonical decomposition mapping: code_point -> first [second]; second
// is 0 for a singleton. Hangul syllables are not listed (they decompose by formula).
struct Decomposition {
  uint32_t code_point;
  uint32_t first;
  uint32_t second;
};

// Primary composite: first + second compose to composite in NFC (composition
// exclusions already removed). Sorted by (first, second).
struct Composition {
  uint32_t first;
  uint32_t second;
  uint32_t composite;
};

// str.lower() of one code point: lower [second]; second is 0 unless the mapping has two
// code points (only U+0130). U+03A3 maps to U+03C3 here; Final_Sigma is the caller's.
struct LowerMapping {
  uint32_t code_point;
  uint32_t lower;
  uint32_t second;
};

// html.unescape's table of numeric references that HTML5 maps elsewhere (&#x80; -> €).
struct HtmlCharrefFixup {
  uint32_t number;
  uint32_t replacement;
};

// One HTML5 named character reference, as in Python's html.entities.html5: the name
// with its trailing ';' where it has one, and the UTF-8 replacement.
struct HtmlEntity {
  const char* name;
  const char* value;
};

extern const char kUnicodeVersion[];
extern const CombiningClassRange kCombiningClasses[];
extern const size_t kCombiningClassesSize;
extern const Decomposition kDecompositions[];
extern const size_t kDecompositionsSize;
extern const Composition kCompositions[];
extern const size_t kCompositionsSize;
extern const LowerMapping kLowerMappings[];
extern const size_t kLowerMappingsSize;
// Case_Ignorable and Cased (the latter minus Case_Ignorable code points): the two
// properties CPython's Final_Sigma rule reads.
extern const CodePointRange kCaseIgnorable[];
extern const size_t kCaseIgnorableSize;
extern const CodePointRange kCased[];
extern const size_t kCasedSize;
// str.isspace(): what str.strip() removes.
extern const CodePointRange kPythonSpace[];
extern const size_t kPythonSpaceSize;
// Code points html.unescape drops when a numeric reference names them.
extern const CodePointRange kHtmlInvalidCodePoints[];
extern const size_t kHtmlInvalidCodePointsSize;
extern const HtmlCharrefFixup kHtmlCharrefFixups[];
extern const size_t kHtmlCharrefFixupsSize;
extern const HtmlEntity kHtmlEntities[];
extern const size_t kHtmlEntitiesSize;

}  // namespace clipserve::unicode_tables

#endif  // CLIPSERVE_SERVER_TOKENIZER_UNICODE_TABLES_H_
