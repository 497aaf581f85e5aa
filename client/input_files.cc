#include "client/input_files.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/common/utf8.h"

namespace clipserve {
namespace {

namespace fs = std::filesystem;

absl::Status ErrorFor(const std::string& path, const std::error_code& error) {
  const std::string message = absl::StrCat(path, ": ", error.message());
  if (error == std::errc::no_such_file_or_directory) return absl::NotFoundError(message);
  if (error == std::errc::permission_denied) return absl::PermissionDeniedError(message);
  return absl::UnknownError(message);
}

// Lists `folder` into `out`. `ancestors` holds the canonical paths of the folders
// being descended (this one included), so that a link back to one of them is skipped
// instead of looping. With `unlisted`, a subfolder that cannot be listed is skipped and
// its error appended there; without, it fails the listing.
absl::Status AddFolder(const fs::path& folder, bool recursive,
                       std::vector<std::string>* out, std::vector<fs::path>* ancestors,
                       std::vector<absl::Status>* unlisted) {
  std::error_code error;
  fs::directory_iterator it(folder, error);
  if (error) return ErrorFor(folder.string(), error);
  std::vector<fs::directory_entry> entries;
  for (; it != fs::directory_iterator(); it.increment(error)) {
    if (error) return ErrorFor(folder.string(), error);
    if (absl::StartsWith(it->path().filename().string(), ".")) continue;
    entries.push_back(*it);
  }
  if (error) return ErrorFor(folder.string(), error);
  std::sort(entries.begin(), entries.end(),
            [](const fs::directory_entry& a, const fs::directory_entry& b) {
              return a.path().filename().string() < b.path().filename().string();
            });
  for (const fs::directory_entry& entry : entries) {
    std::error_code status_error;
    if (entry.is_directory(status_error)) {
      if (!recursive) continue;
      std::error_code canonical_error;
      fs::path canonical = fs::canonical(entry.path(), canonical_error);
      absl::Status status;
      if (canonical_error) {
        status = ErrorFor(entry.path().string(), canonical_error);
      } else if (std::find(ancestors->begin(), ancestors->end(), canonical) !=
                 ancestors->end()) {
        continue;  // a link back up the tree
      } else {
        ancestors->push_back(std::move(canonical));
        status = AddFolder(entry.path(), recursive, out, ancestors, unlisted);
        ancestors->pop_back();
      }
      if (!status.ok()) {
        if (unlisted == nullptr) return status;
        unlisted->push_back(std::move(status));
      }
    } else if (entry.is_regular_file(status_error) &&
               HasImageExtension(entry.path().filename().string())) {
      out->push_back(entry.path().string());
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool HasImageExtension(absl::string_view path) {
  const size_t dot = path.rfind('.');
  if (dot == absl::string_view::npos) return false;
  const std::string extension = absl::AsciiStrToLower(path.substr(dot + 1));
  for (const char* known : {"jpg", "jpeg", "jpe", "png", "webp", "gif", "bmp"}) {
    if (extension == known) return true;
  }
  return false;
}

absl::StatusOr<std::vector<std::string>> ExpandImagePaths(
    const std::vector<std::string>& paths, bool recursive,
    std::vector<absl::Status>* unlisted) {
  std::vector<std::string> files;
  for (const std::string& path : paths) {
    std::error_code error;
    const fs::file_status status = fs::status(path, error);
    if (error) return ErrorFor(path, error);
    if (fs::is_directory(status)) {
      std::vector<fs::path> ancestors = {fs::canonical(path, error)};
      if (error) return ErrorFor(path, error);
      if (absl::Status added = AddFolder(path, recursive, &files, &ancestors, unlisted);
          !added.ok()) {
        return added;
      }
    } else {
      files.push_back(path);
    }
  }
  if (files.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no image files in ", absl::StrJoin(paths, ", "),
                     recursive ? "" : " (use --recursive to descend into subfolders)"));
  }
  return files;
}

absl::StatusOr<std::string> ReadFileBytes(const std::string& path, uint64_t max_bytes) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (error) return ErrorFor(path, error);
  if (fs::is_directory(status)) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": is a folder"));
  }
  const auto too_big = [&](uint64_t size, absl::string_view at_least) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", at_least, size, " bytes, over the limit of ", max_bytes));
  };
  if (fs::is_regular_file(status)) {
    const uint64_t size = fs::file_size(path, error);
    if (!error && size > max_bytes) return too_big(size, "");
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return OpenError(path, "cannot open", errno);
  }
  // Read in chunks, so that a file that grew since, or a pipe, stops at the limit.
  std::string bytes;
  char chunk[1 << 16];
  while (file.read(chunk, sizeof(chunk)) || file.gcount() > 0) {
    const uint64_t got = static_cast<uint64_t>(file.gcount());
    if (got > max_bytes - bytes.size()) return too_big(bytes.size() + got, "at least ");
    bytes.append(chunk, got);
  }
  if (file.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return bytes;
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileBytes(path, kMaxTokenFileBytes);
  if (!bytes.ok()) return bytes.status();
  const absl::string_view token = absl::StripAsciiWhitespace(*bytes);
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": holds no token"));
  }
  for (const char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          path,
          ": must hold one token of visible ASCII characters (no spaces, one "
          "line)"));
    }
  }
  return std::string(token);
}

absl::Status OpenError(absl::string_view path, absl::string_view what, int error) {
  if (error == 0) return absl::UnknownError(absl::StrCat(path, ": ", what));
  return absl::ErrnoToStatus(error, absl::StrCat(path, ": ", what));
}

std::optional<std::vector<std::string>> SplitLines(absl::string_view text,
                                                   size_t max_lines) {
  absl::ConsumePrefix(&text, "\xEF\xBB\xBF");  // a UTF-8 byte order mark
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    absl::ConsumeSuffix(&line, "\r");
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    if (lines.size() == max_lines) return std::nullopt;
    lines.emplace_back(line);
  }
  return lines;
}

absl::StatusOr<std::vector<std::string>> ReadLines(const std::string& path,
                                                   absl::string_view noun,
                                                   uint64_t max_bytes, size_t max_lines) {
  std::string bytes;
  if (path == "-") {
    // read(2) itself: `stream << std::cin.rdbuf()` flags a failed read on the stream
    // it writes, not on std::cin, and stops as at the end.
    char chunk[1 << 16];
    while (true) {
      const ssize_t n = ::read(STDIN_FILENO, chunk, sizeof chunk);
      if (n > 0) {
        if (static_cast<uint64_t>(n) > max_bytes - bytes.size()) {
          return absl::InvalidArgumentError(
              absl::StrCat("standard input: at least ", bytes.size() + n,
                           " bytes, over the limit of ", max_bytes));
        }
        bytes.append(chunk, static_cast<size_t>(n));
      } else if (n == 0) {
        break;
      } else if (errno != EINTR) {
        return absl::DataLossError(absl::StrCat("standard input: read error: ",
                                                std::system_category().message(errno)));
      }
    }
  } else {
    absl::StatusOr<std::string> read = ReadFileBytes(path, max_bytes);
    if (!read.ok()) return read.status();
    bytes = *std::move(read);
  }
  // Texts travel as Protobuf strings, which must be UTF-8: say which line is not,
  // here, rather than send it to be refused.
  if (const size_t valid = ValidUtf8PrefixLength(bytes); valid != bytes.size()) {
    const auto line = std::count(bytes.begin(), bytes.begin() + valid, '\n') + 1;
    return absl::InvalidArgumentError(
        absl::StrCat(path == "-" ? "standard input" : path, ": line ", line,
                     " is not valid UTF-8 (", noun, "s must be UTF-8)"));
  }
  std::optional<std::vector<std::string>> lines = SplitLines(bytes, max_lines);
  if (!lines.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(path == "-" ? "standard input" : path,
                                                   ": more than ", max_lines, " ", noun,
                                                   "s, over the limit (split the file)"));
  }
  return *std::move(lines);
}

}  // namespace clipserve
