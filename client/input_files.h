#ifndef CLIPSERVE_CLIENT_INPUT_FILES_H_
#define CLIPSERVE_CLIENT_INPUT_FILES_H_

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace clipserve {

// Reading the inputs of clip_client. Every error message starts with the path it is
// about. Thread-safe (they only read the file system).

// Whether a file name has an image extension clipserve decodes (.jpg .jpeg .jpe .png
// .webp .gif .bmp, any case).
bool HasImageExtension(absl::string_view path);

// Expands command-line paths into the image files to embed, in a stable order:
// a file is taken as given (whatever its name: the server sniffs the content); a
// folder contributes its files with an image extension, sorted by name (byte order),
// skipping hidden entries (".name"); with `recursive`, its subfolders too, each
// expanded where its name sorts (depth first). Symbolic links are followed, except a
// link to a folder it is inside of (which would loop).
// Errors: NOT_FOUND for a path that does not exist, PERMISSION_DENIED for a folder
// that cannot be listed, INVALID_ARGUMENT when no file at all is found. With
// `unlisted`, a subfolder found on the way that cannot be listed (a lost+found owned by
// root) is skipped, its error appended there, instead of failing the whole expansion;
// the paths given must still be readable themselves.
absl::StatusOr<std::vector<std::string>> ExpandImagePaths(
    const std::vector<std::string>& paths, bool recursive,
    std::vector<absl::Status>* unlisted = nullptr);

// The bytes of a file. NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION (a folder),
// DATA_LOSS (a read error), or INVALID_ARGUMENT when it holds more than `max_bytes`
// (found from its size before reading, or while reading a pipe), each as
// "path: reason".
absl::StatusOr<std::string> ReadFileBytes(
    const std::string& path, uint64_t max_bytes = std::numeric_limits<uint64_t>::max());

// The most bytes and lines ReadLines() reads by default: millions of captions, more
// than one job sends, and a bound on what /dev/zero or an endless pipe (`yes`) can
// make the client hold: each line kept costs its bytes and some 32 more, so at most
// about 0.7 GiB.
inline constexpr uint64_t kMaxTextFileBytes = uint64_t{256} << 20;
inline constexpr size_t kMaxTextFileLines = size_t{4} << 20;

// The most bytes of a --token_file (a token is a line) and of a TLS file (a PEM
// certificate chain or key), read whole.
inline constexpr uint64_t kMaxTokenFileBytes = uint64_t{64} << 10;
inline constexpr uint64_t kMaxPemFileBytes = uint64_t{16} << 20;

// The lines of a text file ("-" reads standard input), one item per line: "\n" or
// "\r\n" endings and a UTF-8 byte order mark at the start are removed, and blank lines
// (empty or only ASCII whitespace) are skipped; other lines are kept as they are.
// Errors as ReadFileBytes() (more than `max_bytes`, from standard input too), DATA_LOSS
// for a read error on standard input, INVALID_ARGUMENT "path: line N is not valid
// UTF-8 (<noun>s must be UTF-8)" for the first line that is not, or for more than
// `max_lines` lines to keep (refused before they are kept).
absl::StatusOr<std::vector<std::string>> ReadLines(const std::string& path,
                                                   absl::string_view noun = "text",
                                                   uint64_t max_bytes = kMaxTextFileBytes,
                                                   size_t max_lines = kMaxTextFileLines);

// The bearer token in a file (--token_file): its contents with surrounding whitespace
// (a trailing newline) removed. INVALID_ARGUMENT "path: ..." when nothing is left or
// what is left is not one token of visible ASCII characters (the message never
// repeats the file's contents); read errors as ReadFileBytes(), with a limit of
// kMaxTokenFileBytes.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// The status for a file that could not be opened: "path: what: <the system's
// reason>", with the code absl::ErrnoToStatus() gives `error` (NOT_FOUND for a
// missing file or folder, PERMISSION_DENIED, FAILED_PRECONDITION for a folder in a
// file's place...); UNKNOWN when `error` is 0 (the stream said nothing). Pass errno
// as read right after the failed open, before anything else can change it.
absl::Status OpenError(absl::string_view path, absl::string_view what, int error);

// Splits text into lines as ReadLines() does; nullopt where there are more than
// `max_lines` to keep.
std::optional<std::vector<std::string>> SplitLines(
    absl::string_view text, size_t max_lines = std::numeric_limits<size_t>::max());

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_INPUT_FILES_H_
