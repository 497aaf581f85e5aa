#ifndef CLIPSERVE_SERVER_TOKENIZER_HTML_UNESCAPE_H_
#define CLIPSERVE_SERVER_TOKENIZER_HTML_UNESCAPE_H_

#include <string>
#include <string_view>

namespace clipserve {

// Replaces HTML character references the way Python's html.unescape does (CPython 3.11):
//  - every one of the 2231 HTML5 named references, with or without the ';' that the
//    names allow to be dropped ("&amp;", "&amp", "&ampx" -> "&x"; the longest known
//    prefix of an unknown name is replaced, as HTML5 specifies);
//  - decimal "&#NN;" and hexadecimal "&#xHH;" references, ';' optional: the Windows-1252
//    fixups (&#x80; -> U+20AC), U+FFFD for 0, surrogates and values past U+10FFFF, and
//    nothing for the code points HTML5 forbids (controls, noncharacters);
//  - anything else stays as it is.
// One pass only: "&amp;lt;" becomes "&lt;" (CLIP's cleaner calls it twice). Works on code
// points because html.unescape measures names (at most 32) in characters. Pure:
// thread-safe, never blocks.
std::u32string HtmlUnescape(std::u32string_view text);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_TOKENIZER_HTML_UNESCAPE_H_
