// clip_client: the command line for a clipserve server.
//
//   clip_client [GLOBAL OPTIONS: --target, --deadline_ms, TLS, --token_file, ...]
//               SUBCOMMAND [OPTIONS] [ARGS...]
//
// Subcommands: embed-text, embed-image, similarity, classify, tokenize, info, health
// and bench; `clip_client SUBCOMMAND --help` lists each one's options, and
// docs/CLIENT.md describes them all.
//
// Results go to stdout (or --output); progress bars go to stderr when it is a
// terminal. Errors print "error: CODE: message" on stderr and exit non-zero; a failed
// item of a bulk job names its file or text. See docs/CLIENT.md.

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/bench.h"
#include "client/clip_client.h"
#include "client/error_naming.h"
#include "client/input_files.h"
#include "client/npy_writer.h"
#include "client/output_file.h"
#include "client/output_format.h"
#include "client/progress_bar.h"
#include "client/reply_check.h"
#include "client/status_details.h"
#include "server/common/utf8.h"

namespace clipserve {
namespace {

// CLI11's PositiveNumber and NonNegativeNumber say "Value 0 not in range 0.000000 to
// 1797...(309 digits)" for 0, which reads as if 0 were allowed, give a word such as
// "abc" the same range message, and let "nan" through. These name what is wanted.
// Values of more than `maximum` are refused too.
CLI::Validator FiniteNumberAtLeast(double minimum, bool inclusive, std::string wanted,
                                   double maximum = std::numeric_limits<double>::max()) {
  return CLI::Validator(
      [minimum, inclusive, wanted, maximum](std::string& input) -> std::string {
        double value = 0;
        if (!absl::SimpleAtod(input, &value) || std::isnan(value)) {
          return absl::StrCat("'", input, "' is not a number");
        }
        if (std::isinf(value) || value < minimum || (!inclusive && value == minimum) ||
            value > maximum) {
          return absl::StrCat("must be ", wanted, ", got ", input);
        }
        return std::string();
      },
      absl::StrCat("NUMBER", inclusive ? ">=" : ">", minimum));
}
const CLI::Validator kPositive = FiniteNumberAtLeast(0, false, "a positive number");
const CLI::Validator kNonNegative = FiniteNumberAtLeast(0, true, "0 or more");

// --temperature travels as a float, which the server wants finite and at least 1e-6
// (clip_service.proto): 1e-50 would reach it as 0 and 1e39 as inf, refused there
// with a value the user never typed.
constexpr double kMinTemperature = 1e-6;
const CLI::Validator kTemperature =
    FiniteNumberAtLeast(kMinTemperature, true,
                        absl::StrCat("from ", kMinTemperature, " to ",
                                     std::numeric_limits<float>::max(), " (a float)"),
                        std::numeric_limits<float>::max());

// Texts per EmbedText / Tokenize request by default (--texts_per_request): well under
// the server's default --max_items_per_request (256), and big enough to batch well.
constexpr int kTextsPerRequest = 128;

// "CODE: message", and the call's request id when the error came from a call, for
// finding the server's log line about it.
std::string ErrorText(const absl::Status& status) {
  std::string text =
      absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message());
  if (std::optional<std::string> id = RequestIdOf(status); id.has_value()) {
    absl::StrAppend(&text, " (request id ", *id, ")");
  }
  return text;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", ErrorText(status).c_str());
  return EXIT_FAILURE;
}

// Errors of whole calls: UNAVAILABLE says which server could not be reached, or, in a
// job of `total` `items` of which `answered` had been, which one was lost.
int FailCall(const absl::Status& status, const std::string& target, size_t answered = 0,
             size_t total = 0, absl::string_view items = "") {
  if (status.code() == absl::StatusCode::kUnavailable) {
    return Fail(Prefixed(status, UnavailablePrefix(target, answered, total, items)));
  }
  return Fail(status);
}

bool IsNpyPath(const std::string& path) { return absl::EndsWithIgnoreCase(path, ".npy"); }

// "" or "-", or a name of stdout's own descriptor: opening /dev/stdout would truncate
// a file the shell opened for appending (>>).
bool IsStdout(const std::string& output) {
  return output.empty() || output == "-" || DescriptorNamed(output) == 1;
}

// The file an embedding command writes, opened before the work so that a path that
// cannot be written fails at once; nullopt for stdout (IsStdout()).
absl::StatusOr<std::optional<OutputFile>> OpenOutput(const std::string& output) {
  if (IsStdout(output)) return std::optional<OutputFile>();
  absl::StatusOr<OutputFile> file = OutputFile::Open(output);
  if (!file.ok()) return file.status();
  return std::optional<OutputFile>(*std::move(file));
}

// Writes embeddings (one row per input, in order): as .npy when the output's name ends
// with .npy, else as JSON lines; into `file`, then moved into place, or to stdout when
// there is none. With `name_npy_rows`, an .npy file's rows are named on stdout, one
// RowJsonLine each (rows of skipped files are missing from it).
absl::Status WriteEmbeddings(std::optional<OutputFile>& file,
                             const std::vector<std::string>& inputs,
                             const std::vector<std::vector<float>>& rows,
                             bool name_npy_rows = false) {
  if (file.has_value() && IsNpyPath(file->path())) {
    const size_t dim = rows.empty() ? 0 : rows[0].size();
    std::vector<float> flat;
    flat.reserve(rows.size() * dim);
    for (const std::vector<float>& row : rows) {
      if (row.size() != dim) {
        return absl::InternalError("the server returned embeddings of different widths");
      }
      flat.insert(flat.end(), row.begin(), row.end());
    }
    const absl::Status written =
        WriteNpyFile(file->write_path(), rows.size(), dim, flat, file->appends());
    if (!written.ok()) return written;
    // The rows are named before the file is moved into place: a run whose stdout
    // fails leaves an earlier file as it was, as any failed run does.
    if (name_npy_rows) {
      for (size_t i = 0; i < inputs.size(); ++i) {
        std::cout << RowJsonLine(i, inputs[i]) << '\n';
      }
      std::cout.flush();
      if (!std::cout) return absl::DataLossError("stdout: write failed");
    }
    return file->Commit();
  }
  std::ofstream stream;
  std::ostream* out = &std::cout;
  if (file.has_value()) {
    stream.open(file->write_path(), file->appends() ? std::ios::app : std::ios::trunc);
    if (!stream) return OpenError(file->path(), "cannot open for writing", errno);
    out = &stream;
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    *out << EmbeddingJsonLine(i, inputs[i], rows[i]) << '\n';
  }
  out->flush();
  if (!*out) {
    return absl::DataLossError(
        absl::StrCat(file.has_value() ? file->path() : "stdout", ": write failed"));
  }
  if (!file.has_value()) return absl::OkStatus();
  stream.close();
  if (!stream) return absl::DataLossError(absl::StrCat(file->path(), ": write failed"));
  return file->Commit();
}

// Texts from the command line (or labels, templates: `noun`) travel as Protobuf
// strings, which must be UTF-8: refused here, before any call (ReadLines checks a
// file's). The error names "<noun> argument N", or "<noun> N <from>" for items split
// from arguments (from = "of --labels").
absl::Status CheckUtf8Arguments(const std::vector<std::string>& texts,
                                absl::string_view noun, absl::string_view from = "") {
  for (size_t i = 0; i < texts.size(); ++i) {
    if (!IsValidUtf8(texts[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          noun, from.empty() ? " argument " : " ", i + 1, from.empty() ? "" : " ", from,
          " is not valid UTF-8 (", noun, "s must be UTF-8)"));
    }
  }
  return absl::OkStatus();
}

// Texts (or labels: `noun`, split from arguments `from`, as CheckUtf8Arguments()) from
// arguments, then from the lines of `file` when given; `sources` names both in the
// error for none.
absl::StatusOr<std::vector<std::string>> CollectTexts(
    std::vector<std::string> texts, const std::string& file,
    absl::string_view noun = "text", absl::string_view from = "",
    absl::string_view sources = "TEXT arguments or --file") {
  if (absl::Status utf8 = CheckUtf8Arguments(texts, noun, from); !utf8.ok()) return utf8;
  if (!file.empty()) {
    absl::StatusOr<std::vector<std::string>> lines = ReadLines(file, noun);
    if (!lines.ok()) return lines.status();
    if (lines->empty() && texts.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file == "-" ? "standard input" : file, ": no ", noun,
                       "s (blank lines are skipped)"));
    }
    texts.insert(texts.end(), lines->begin(), lines->end());
  }
  if (texts.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no ", noun, "s: give ", sources));
  }
  return texts;
}

// Room left in a request message for what surrounds an image's bytes.
constexpr uint64_t kMessageOverheadBytes = 1024;

// The most bytes an image file may hold to fit in a message of `max_message_bytes`.
uint64_t MaxImageFileBytes(int64_t max_message_bytes) {
  const uint64_t limit = static_cast<uint64_t>(max_message_bytes);
  return limit > kMessageOverheadBytes ? limit - kMessageOverheadBytes : 0;
}

absl::StatusOr<std::vector<std::string>> ReadImages(const std::vector<std::string>& paths,
                                                    uint64_t max_file_bytes) {
  std::vector<std::string> images;
  for (const std::string& path : paths) {
    absl::StatusOr<std::string> bytes = ReadFileBytes(path, max_file_bytes);
    if (!bytes.ok()) return bytes.status();
    images.push_back(*std::move(bytes));
  }
  return images;
}

void PrintJson(const nlohmann::ordered_json& json) {
  std::cout << DumpJson(json) << std::endl;
}

// --texts_per_request, for the subcommands that send texts in chunks.
void AddTextsPerRequestOption(CLI::App* command, int* texts_per_request) {
  command
      ->add_option("--texts_per_request", *texts_per_request,
                   "Texts sent in one request, at most the server's "
                   "--max_items_per_request")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
}

// ---------------------------------------------------------------------------
// Subcommands

struct EmbedTextArgs {
  std::string output;
  bool normalize = true;
  bool truncate = true;
  int texts_per_request = kTextsPerRequest;
  std::string file;
  std::vector<std::string> texts;
};

int EmbedText(ClipClient& client, const std::string& target, const EmbedTextArgs& args) {
  absl::StatusOr<std::vector<std::string>> texts = CollectTexts(args.texts, args.file);
  if (!texts.ok()) return Fail(texts.status());
  absl::StatusOr<std::optional<OutputFile>> output = OpenOutput(args.output);
  if (!output.ok()) return Fail(output.status());
  std::vector<std::vector<float>> rows;
  rows.reserve(texts->size());
  std::string model;  // that of the first reply
  const size_t per_request = static_cast<size_t>(args.texts_per_request);
  ProgressBar bar(StderrIsTerminal() && texts->size() > per_request, texts->size(),
                  "texts");
  for (size_t offset = 0; offset < texts->size(); offset += per_request) {
    const size_t end = std::min(texts->size(), offset + per_request);
    v1::EmbedTextRequest request;
    for (size_t i = offset; i < end; ++i) request.add_texts((*texts)[i]);
    request.set_normalize(args.normalize);
    request.set_truncate(args.truncate);
    absl::StatusOr<v1::EmbedTextResponse> response = client.EmbedTexts(request);
    if (!response.ok()) {
      bar.Finish(/*erase=*/true);
      return FailCall(NameItem(response.status(), "texts", *texts, offset, true), target,
                      offset, texts->size(), "texts");
    }
    if (response->embeddings_size() != static_cast<int>(end - offset)) {
      return Fail(
          absl::InternalError("the server returned a wrong number of embeddings"));
    }
    // Each reply was checked alone (CheckReply); the rows of all of them go into one
    // table, from one model. Two replicas serving different models (a rollout behind a
    // round-robin target) must not mix in it.
    if (offset == 0) {
      model = response->model();
    } else if (response->model() != model) {
      bar.Finish(/*erase=*/true);
      return Fail(absl::InternalError(
          absl::StrCat("the server's reply is malformed: texts from ", offset + 1,
                       " on were embedded by model \"", response->model(),
                       "\", those before by \"", model, "\"")));
    }
    for (const v1::Embedding& embedding : response->embeddings()) {
      if (absl::Status status =
              CheckStreamEmbedding(rows.empty() ? 0 : rows[0].size(), embedding);
          !status.ok()) {
        bar.Finish(/*erase=*/true);
        return Fail(status);
      }
      rows.emplace_back(embedding.values().begin(), embedding.values().end());
    }
    bar.Update(end);
  }
  bar.Finish();
  if (absl::Status status = WriteEmbeddings(*output, *texts, rows); !status.ok()) {
    return Fail(status);
  }
  return EXIT_SUCCESS;
}

struct EmbedImageArgs {
  std::string output;
  bool normalize = true;
  bool recursive = false;
  bool skip_errors = false;
  int max_in_flight = 64;
  std::vector<std::string> paths;
  uint64_t max_file_bytes = 0;  // MaxImageFileBytes(--max_message_bytes)
};

// The image files to embed. With --skip_errors, a path that cannot be read (missing,
// or a folder or subfolder that cannot be listed) is a warning, counted in
// `*unreadable`, like a file that fails later; it is an error when no file is left.
absl::StatusOr<std::vector<std::string>> FilesToEmbed(const EmbedImageArgs& args,
                                                      size_t* unreadable) {
  if (!args.skip_errors) return ExpandImagePaths(args.paths, args.recursive);
  std::vector<std::string> files;
  absl::StatusCode unreadable_code = absl::StatusCode::kOk;  // the first warning's
  const auto warn = [&](const absl::Status& error) {
    std::fprintf(stderr, "warning: %s\n", ErrorText(error).c_str());
    ++*unreadable;
    if (unreadable_code == absl::StatusCode::kOk) unreadable_code = error.code();
  };
  for (const std::string& path : args.paths) {
    std::vector<absl::Status> unlisted;
    absl::StatusOr<std::vector<std::string>> found =
        ExpandImagePaths({path}, args.recursive, &unlisted);
    for (const absl::Status& error : unlisted) warn(error);
    if (found.ok()) {
      files.insert(files.end(), found->begin(), found->end());
    } else if (found.status().code() != absl::StatusCode::kInvalidArgument) {
      warn(found.status());
    }  // else a folder without images, which is no failure of its own
  }
  if (!files.empty()) return files;
  // Every path failed (each warned of above), or the folders hold no images.
  if (*unreadable > 0) {
    return absl::Status(unreadable_code,
                        absl::StrCat("no image file found: ", *unreadable,
                                     *unreadable == 1 ? " path" : " paths",
                                     " could not be read (see above)"));
  }
  return ExpandImagePaths(args.paths, args.recursive).status();
}

int EmbedImage(ClipClient& client, const std::string& target,
               const EmbedImageArgs& args) {
  size_t unreadable = 0;
  absl::StatusOr<std::vector<std::string>> paths = FilesToEmbed(args, &unreadable);
  if (!paths.ok()) return Fail(paths.status());
  absl::StatusOr<std::optional<OutputFile>> output = OpenOutput(args.output);
  if (!output.ok()) return Fail(output.status());
  // Which files failed here (could not be read), not at the server. Each item is
  // read once, on the stream's writer thread; looked at once the stream is done.
  std::vector<char> read_here(paths->size(), 0);
  ProgressBar bar(StderrIsTerminal() && paths->size() > 1, paths->size(), "images");
  EmbedStreamOptions options;
  options.normalize = args.normalize;
  options.max_in_flight = args.max_in_flight;
  options.stop_on_error = !args.skip_errors;
  options.on_progress = [&bar](size_t done, size_t) { bar.Update(done); };
  absl::StatusOr<std::vector<absl::StatusOr<EmbeddedItem>>> results = client.EmbedStream(
      paths->size(),
      [&paths, &args, &read_here](size_t i) -> absl::StatusOr<EmbedItem> {
        // A file too big for one message fails alone, before it is sent (gRPC would
        // end the whole stream).
        absl::StatusOr<std::string> bytes =
            ReadFileBytes((*paths)[i], args.max_file_bytes);
        if (!bytes.ok()) {
          read_here[i] = 1;
          return bytes.status();
        }
        return EmbedItem::Image(*std::move(bytes));
      },
      options);
  if (!results.ok()) return Fail(results.status());
  // Keep the final line (count, rate, time) on success; a failure explains itself.
  bar.Finish(/*erase=*/std::any_of(results->begin(), results->end(),
                                   [](const auto& r) { return !r.ok(); }));

  std::vector<std::string> inputs;
  std::vector<std::vector<float>> rows;
  size_t failed = 0;  // of the files found (a path that could not be read is not one)
  // The first failure that is not a file's own (IsTheItemsOwnError): the server gone,
  // refusing the call, overloaded or failing, or no answer in time. It befalls every
  // file alike, so it is said once, and it fails the job even with --skip_errors.
  absl::Status job_error;
  size_t job_failed = 0;
  size_t answered = 0;  // embedded, or failed for a reason of the file's own
  for (size_t i = 0; i < results->size(); ++i) {
    absl::StatusOr<EmbeddedItem>& result = (*results)[i];
    if (result.ok()) {
      ++answered;
      inputs.push_back((*paths)[i]);
      rows.push_back(std::move(result->embedding));
      continue;
    }
    ++failed;
    // Items never tried because an earlier one failed need no line of their own (a
    // CANCELLED from the server, which dropped the item, is said).
    if (IsNotProcessed(result.status())) continue;
    if (!IsTheItemsOwnError(result.status(), read_here[i] != 0)) {
      if (job_error.ok()) job_error = result.status();
      ++job_failed;
      continue;
    }
    if (read_here[i] == 0) ++answered;  // a file failed here never reached the server
    // A file that could not be read here is named by its error already; the server's
    // errors name no file (a file may well be called "image", as its messages start).
    const absl::Status named =
        read_here[i] != 0 ? result.status() : WithPrefix(result.status(), (*paths)[i]);
    std::fprintf(stderr, "%s: %s\n", args.skip_errors ? "warning" : "error",
                 ErrorText(named).c_str());
  }
  if (!job_error.ok()) {
    FailCall(job_error, target, answered, paths->size(), "images");
    if (args.skip_errors) {
      std::fprintf(stderr,
                   "nothing written: %zu of %zu files failed for a reason not their own; "
                   "--skip_errors skips only files that cannot be read or are not valid "
                   "images\n",
                   job_failed, paths->size());
    }
    return EXIT_FAILURE;
  }
  if (failed > 0 && (!args.skip_errors || rows.empty())) {
    if (!args.skip_errors) {
      std::fprintf(stderr,
                   "nothing written; --skip_errors embeds the other files and reports "
                   "the failed ones\n");
    } else {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("every one of the ", failed, " files failed (see above)")));
    }
    return EXIT_FAILURE;
  }
  if (failed > 0 || unreadable > 0) {
    std::string skipped =
        absl::StrCat("skipped ", failed, " of ", paths->size(), " files");
    if (unreadable > 0) {
      absl::StrAppend(&skipped, " and ", unreadable, unreadable == 1 ? " path" : " paths",
                      " that could not be read");
    }
    std::fprintf(stderr, "warning: %s\n", skipped.c_str());
  }
  if (absl::Status status = WriteEmbeddings(*output, inputs, rows, args.skip_errors);
      !status.ok()) {
    return Fail(status);
  }
  return EXIT_SUCCESS;
}

struct SimilarityArgs {
  bool paired = false;
  bool json = false;
  std::optional<float> temperature;
  std::vector<std::string> images;
  std::vector<std::string> texts;
  uint64_t max_file_bytes = 0;
};

int Similarity(ClipClient& client, const std::string& target,
               const SimilarityArgs& args) {
  if (absl::Status utf8 = CheckUtf8Arguments(args.texts, "text"); !utf8.ok()) {
    return Fail(utf8);
  }
  absl::StatusOr<std::vector<std::string>> images =
      ReadImages(args.images, args.max_file_bytes);
  if (!images.ok()) return Fail(images.status());
  v1::SimilarityRequest request;
  for (std::string& image : *images) {
    request.mutable_images()->mutable_images()->add_images()->set_encoded(
        std::move(image));
  }
  for (const std::string& text : args.texts) {
    request.mutable_texts()->mutable_texts()->add_texts(text);
  }
  if (args.temperature.has_value()) request.set_temperature(*args.temperature);
  request.set_paired(args.paired);
  absl::StatusOr<v1::SimilarityResponse> response = client.Similarity(request);
  if (!response.ok()) {
    absl::Status status = NameItem(response.status(), "images", args.images, 0, false);
    if (status.message() == response.status().message()) {
      status = NameItem(response.status(), "texts", args.texts, 0, true);
    }
    return FailCall(status, target);
  }
  if (args.json) {
    PrintJson(SimilarityJson(*response, args.paired, args.images, args.texts));
  } else {
    std::cout << SimilarityTable(*response, args.images, args.texts, args.paired);
  }
  return EXIT_SUCCESS;
}

// Images per Classify request by default (--images_per_request): one batch of the
// server's default --max_batch_size, and few files read at a time.
constexpr int kImagesPerClassifyRequest = 32;

struct ClassifyArgs {
  std::vector<std::string> images;  // files or folders
  bool recursive = false;
  int images_per_request = kImagesPerClassifyRequest;
  std::vector<std::string> labels;
  std::string labels_file;
  std::vector<std::string> templates;
  int top_k = 0;
  std::optional<float> temperature;
  bool json = false;
  uint64_t max_file_bytes = 0;
};

int Classify(ClipClient& client, const std::string& target, const ClassifyArgs& args) {
  absl::StatusOr<std::vector<std::string>> paths =
      ExpandImagePaths(args.images, args.recursive);
  if (!paths.ok()) return Fail(paths.status());
  // "cat, dog" means "cat" and "dog", and "a,,b" two labels (CLI11 keeps "" alone).
  std::vector<std::string> split_labels;
  for (const std::string& label : args.labels) {
    const absl::string_view trimmed = absl::StripAsciiWhitespace(label);
    if (!trimmed.empty()) split_labels.emplace_back(trimmed);
  }
  absl::StatusOr<std::vector<std::string>> labels =
      CollectTexts(std::move(split_labels), args.labels_file, "label", "of --labels",
                   "--labels or --labels_file");
  if (!labels.ok()) return Fail(labels.status());
  if (absl::Status utf8 = CheckUtf8Arguments(args.templates, "template"); !utf8.ok()) {
    return Fail(utf8);
  }
  // A request per images_per_request images, each file read just before its request
  // is sent; the server's label cache embeds the prompts once. The results are small
  // (top_k labels an image) and printed together at the end.
  v1::ClassifyResponse all;
  const size_t per_request = static_cast<size_t>(args.images_per_request);
  ProgressBar bar(StderrIsTerminal() && paths->size() > per_request, paths->size(),
                  "images");
  for (size_t offset = 0; offset < paths->size(); offset += per_request) {
    const size_t end = std::min(paths->size(), offset + per_request);
    absl::StatusOr<std::vector<std::string>> images = ReadImages(
        std::vector<std::string>(paths->begin() + offset, paths->begin() + end),
        args.max_file_bytes);
    if (!images.ok()) {
      bar.Finish(/*erase=*/true);
      return Fail(images.status());
    }
    v1::ClassifyRequest request;
    for (std::string& image : *images) {
      request.add_images()->set_encoded(std::move(image));
    }
    for (const std::string& label : *labels) request.add_labels(label);
    for (const std::string& t : args.templates) request.add_templates(t);
    request.set_top_k(static_cast<uint32_t>(args.top_k));
    if (args.temperature.has_value()) request.set_temperature(*args.temperature);
    absl::StatusOr<v1::ClassifyResponse> response = client.Classify(request);
    if (!response.ok()) {
      bar.Finish(/*erase=*/true);
      return FailCall(NameItem(response.status(), "images", *paths, offset, false),
                      target, offset, paths->size(), "images");
    }
    for (v1::Classification& result : *response->mutable_results()) {
      *all.add_results() = std::move(result);
    }
    bar.Update(end);
  }
  bar.Finish();
  if (args.json) {
    PrintJson(ClassifyJson(all, *paths));
  } else {
    std::cout << ClassifyText(all, *paths);
  }
  return EXIT_SUCCESS;
}

struct TokenizeArgs {
  bool json = false;
  bool truncate = true;
  int texts_per_request = kTextsPerRequest;
  std::string file;
  std::vector<std::string> texts;
};

int Tokenize(ClipClient& client, const std::string& target, const TokenizeArgs& args) {
  absl::StatusOr<std::vector<std::string>> texts = CollectTexts(args.texts, args.file);
  if (!texts.ok()) return Fail(texts.status());
  v1::TokenizeResponse all;
  const size_t per_request = static_cast<size_t>(args.texts_per_request);
  for (size_t offset = 0; offset < texts->size(); offset += per_request) {
    const size_t end = std::min(texts->size(), offset + per_request);
    v1::TokenizeRequest request;
    for (size_t i = offset; i < end; ++i) request.add_texts((*texts)[i]);
    request.set_truncate(args.truncate);
    absl::StatusOr<v1::TokenizeResponse> response = client.Tokenize(request);
    if (!response.ok()) {
      return FailCall(NameItem(response.status(), "texts", *texts, offset, true), target,
                      offset, texts->size(), "texts");
    }
    all.set_context_length(response->context_length());
    for (v1::TokenizedText& t : *response->mutable_texts())
      *all.add_texts() = std::move(t);
  }
  if (args.json) {
    PrintJson(TokenizeJson(all, *texts));
  } else {
    std::cout << TokenizeText(all);
  }
  return EXIT_SUCCESS;
}

int Info(ClipClient& client, const std::string& target, bool json) {
  absl::StatusOr<v1::ModelInfo> info = client.GetModelInfo();
  if (!info.ok()) return FailCall(info.status(), target);
  if (json) {
    PrintJson(ModelInfoJson(*info));
  } else {
    std::cout << ModelInfoText(*info);
  }
  return EXIT_SUCCESS;
}

int Health(ClipClient& client, const std::string& target, const std::string& service) {
  auto status = client.CheckHealth(service);
  if (status.status().code() == absl::StatusCode::kNotFound) {
    // The server's message ("unknown service") names none.
    return Fail(Prefixed(status.status(), absl::StrCat("--service '", service, "'")));
  }
  if (!status.ok()) return FailCall(status.status(), target);
  const std::string name =
      grpc::health::v1::HealthCheckResponse::ServingStatus_Name(*status);
  std::printf("%s\n", name.c_str());
  return *status == grpc::health::v1::HealthCheckResponse::SERVING ? EXIT_SUCCESS
                                                                   : EXIT_FAILURE;
}

struct BenchArgs {
  std::string modality;
  int concurrency = 4;
  std::string duration;
  int64_t requests = 0;
  int items_per_request = 1;
  std::string images;
  bool recursive = false;
  std::string texts_file;
  bool unique_texts = false;
  bool json = false;
  uint64_t max_file_bytes = 0;
};

int Bench(ClipClient& client, const std::string& target, absl::Duration timeout,
          const BenchArgs& args) {
  BenchOptions options;
  options.modality =
      args.modality == "image" ? BenchModality::kImage : BenchModality::kText;
  options.concurrency = args.concurrency;
  options.requests = args.requests;
  options.items_per_request = args.items_per_request;
  options.unique_texts = args.unique_texts;
  // Inputs for the other modality would be dropped, and the run's numbers read as
  // though they were measured on them.
  if (options.modality == BenchModality::kImage && !args.texts_file.empty()) {
    return Fail(absl::InvalidArgumentError("--texts_file is for --modality text"));
  }
  if (options.modality == BenchModality::kText &&
      (!args.images.empty() || args.recursive)) {
    return Fail(
        absl::InvalidArgumentError("--images and --recursive are for --modality image"));
  }
  if (args.recursive && args.images.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--recursive descends into the folder of --images, which is not given"));
  }
  options.timeout = timeout;
  options.duration = absl::Seconds(10);
  if (!args.duration.empty()) {
    absl::StatusOr<absl::Duration> duration = ParseBenchDuration(args.duration);
    if (!duration.ok()) return Fail(duration.status());
    options.duration = *duration;
  }
  if (options.modality == BenchModality::kImage) {
    if (!args.images.empty()) {
      absl::StatusOr<std::vector<std::string>> paths =
          ExpandImagePaths({args.images}, args.recursive);
      if (!paths.ok()) return Fail(paths.status());
      // Only the first ones can be sent (see kBenchRequestsPrepared): read no more.
      const size_t used = static_cast<size_t>(kBenchRequestsPrepared) *
                          static_cast<size_t>(args.items_per_request);
      if (paths->size() > used) paths->resize(used);
      absl::StatusOr<std::vector<std::string>> images =
          ReadImages(*paths, args.max_file_bytes);
      if (!images.ok()) return Fail(images.status());
      options.inputs = *std::move(images);
    } else {
      absl::StatusOr<std::vector<std::string>> images = DefaultBenchImages(8);
      if (!images.ok()) return Fail(images.status());
      options.inputs = *std::move(images);
    }
  } else if (!args.texts_file.empty()) {
    absl::StatusOr<std::vector<std::string>> lines = ReadLines(args.texts_file);
    if (!lines.ok()) return Fail(lines.status());
    if (lines->empty()) {
      return Fail(
          absl::InvalidArgumentError(absl::StrCat(args.texts_file, ": no texts")));
    }
    options.inputs = *std::move(lines);
  } else {
    options.inputs = DefaultCaptions();
  }

  ProgressBar bar(StderrIsTerminal(), static_cast<size_t>(args.requests), "requests");
  options.on_progress = [&bar](int64_t done, double fraction) {
    bar.Update(static_cast<size_t>(done), fraction);
  };
  absl::StatusOr<BenchResult> result = RunBench(client, options);
  bar.Finish(/*erase=*/true);
  if (!result.ok()) return FailCall(result.status(), target);
  if (args.json) {
    PrintJson(BenchJson(*result, options));
  } else {
    std::cout << BenchText(*result, options);
  }
  if (result->succeeded == 0 && !result->errors.empty()) {
    // Nothing got through: report why, as any failed command does.
    auto worst = std::max_element(
        result->errors.begin(), result->errors.end(),
        [](const auto& a, const auto& b) { return a.second < b.second; });
    absl::StatusCode code = absl::StatusCode::kUnknown;
    for (int c = 1; c <= 16; ++c) {
      if (absl::StatusCodeToString(static_cast<absl::StatusCode>(c)) == worst->first) {
        code = static_cast<absl::StatusCode>(c);
      }
    }
    return FailCall(
        absl::Status(code, absl::StrCat("every request failed: ",
                                        result->error_examples[worst->first])),
        target);
  }
  if (!result->stopped_early.empty()) {
    return FailCall(absl::UnavailableError(
                        absl::StrCat("the bench stopped early: ", result->stopped_early)),
                    target);
  }
  if (result->requests == 0) {
    // A duration too short for any request: nothing was measured.
    return Fail(absl::DeadlineExceededError(
        "no request was sent within the duration; nothing was measured"));
  }
  return EXIT_SUCCESS;
}

}  // namespace
}  // namespace clipserve

namespace clipserve {
namespace {

// CLI11 takes a flag's value after '=' only: "--normalize false" is the flag (true)
// and then an input, "false", embedded with normalization on. A flag followed by a
// word that spells a truth value is refused before anything runs (before any "--",
// after which every word is an input).
absl::Status RefuseSpacedFlagValues(int argc, char** argv) {
  static constexpr absl::string_view kFlags[] = {
      "--tls",  "--normalize",   "--truncate",     "--recursive", "-r",
      "--json", "--skip_errors", "--unique_texts", "--paired"};
  static constexpr absl::string_view kValues[] = {"true", "false", "yes", "no",
                                                  "on",   "off",   "1",   "0"};
  for (int i = 1; i + 1 < argc; ++i) {
    const absl::string_view flag = argv[i];
    if (flag == "--") break;
    const std::string value = absl::AsciiStrToLower(argv[i + 1]);
    if (std::find(std::begin(kFlags), std::end(kFlags), flag) != std::end(kFlags) &&
        std::find(std::begin(kValues), std::end(kValues), value) != std::end(kValues)) {
      return absl::InvalidArgumentError(absl::StrCat(
          flag, " ", argv[i + 1], ": a flag takes its value after '=' (", flag, "=",
          argv[i + 1], "); an input that spells one goes after --"));
    }
  }
  return absl::OkStatus();
}

// CLI11 reads "-hi there" as -h (help, exit 0, nothing done) and "-of course" as
// "-o 'f course'" (a file of that name written): a text that begins with '-' given
// before "--" must not be taken for options. So a short option joined to more
// characters (a letter after one '-', then anything) is refused before anything runs;
// short options are given apart, their values too (-o FILE).
absl::Status RefuseJoinedShortOptions(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.size() > 2 && arg[0] == '-' && absl::ascii_isalpha(arg[1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", arg, "' reads as the option ", arg.substr(0, 2),
                       " joined to more: give a short option apart (", arg.substr(0, 2),
                       " VALUE), and a text that begins with '-' after --"));
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace clipserve

int main(int argc, char** argv) {
  using namespace clipserve;  // NOLINT(build/namespaces): main only
  CLI::App app{"clip_client: talk to a clipserve CLIP embedding server"};
  app.require_subcommand(1);
  // The options above the subcommands may also follow it: `clip_client info --target X`.
  app.fallthrough();
  ClientOptions options;
  int64_t deadline_ms = 30000;
  app.add_option("--target", options.target,
                 "Server: host:port, a comma-separated list (round-robin), or a gRPC URI "
                 "such as dns:///name:port")
      ->capture_default_str();
  app.add_option("--deadline_ms", deadline_ms,
                 "Deadline per call in milliseconds (retries included); for embed-image, "
                 "the longest wait for the stream to open (connecting included) and for "
                 "each next result")
      ->capture_default_str()
      ->check(kPositive);
  bool tls = false;
  std::string tls_ca, tls_cert, tls_key, token_file;
  app.add_flag("--tls", tls,
               "Connect with TLS, verifying the server against gRPC's default roots "
               "(implied by --tls_ca, --tls_cert and --tls_server_name)");
  app.add_option("--tls_ca", tls_ca,
                 "PEM CA certificate(s) to verify the server's certificate with");
  CLI::Option* cert_opt = app.add_option(
      "--tls_cert", tls_cert, "PEM client certificate, for a server that demands one");
  CLI::Option* key_opt =
      app.add_option("--tls_key", tls_key, "PEM private key of --tls_cert");
  cert_opt->needs(key_opt);
  key_opt->needs(cert_opt);
  app.add_option(
      "--tls_server_name", options.tls.server_name_override,
      "Name to expect in the server's certificate instead of the target's host");
  int64_t max_message_bytes = options.max_receive_message_bytes;
  app.add_option("--max_message_bytes", max_message_bytes,
                 "The server's --max_message_bytes: larger responses are refused, and an "
                 "image file too big to fit in one request fails alone before it is sent")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{4096}, int64_t{std::numeric_limits<int32_t>::max()}));
  app.add_option("--token_file", token_file,
                 "File holding a bearer token, sent as 'authorization: Bearer <token>' "
                 "on every call");

  // embed-text
  EmbedTextArgs text_args;
  CLI::App* embed_text =
      app.add_subcommand("embed-text", "Embed texts (arguments and/or --file lines)");
  embed_text->add_option(
      "--output,-o", text_args.output,
      "x.npy (float32 [N, D]) or x.jsonl; default: JSON lines on stdout");
  embed_text
      ->add_flag("--normalize", text_args.normalize,
                 "L2-normalize the embeddings (--normalize=false for raw)")
      ->capture_default_str();
  embed_text
      ->add_flag("--truncate", text_args.truncate,
                 "Cut texts longer than the context (--truncate=false: fail instead)")
      ->capture_default_str();
  embed_text->add_option(
      "--file,-f", text_args.file,
      "Read texts from a file, one per line (blank lines skipped; - = stdin)");
  AddTextsPerRequestOption(embed_text, &text_args.texts_per_request);
  embed_text->add_option("texts", text_args.texts, "Texts to embed");

  // embed-image
  EmbedImageArgs image_args;
  CLI::App* embed_image = app.add_subcommand(
      "embed-image", "Embed image files, or the images in folders (sorted by name)");
  embed_image->add_option(
      "--output,-o", image_args.output,
      "x.npy (float32 [N, D]) or x.jsonl; default: JSON lines on stdout");
  embed_image
      ->add_flag("--normalize", image_args.normalize,
                 "L2-normalize the embeddings (--normalize=false for raw)")
      ->capture_default_str();
  embed_image->add_flag("--recursive,-r", image_args.recursive,
                        "Descend into subfolders of folders");
  embed_image->add_flag("--skip_errors", image_args.skip_errors,
                        "Report files that fail and write the others' embeddings");
  embed_image
      ->add_option("--max_in_flight", image_args.max_in_flight,
                   "Images sent and not yet answered, at most")
      ->capture_default_str()
      ->check(kPositive);
  embed_image->add_option("paths", image_args.paths, "Image files or folders")
      ->required();

  // similarity
  SimilarityArgs sim_args;
  CLI::App* similarity = app.add_subcommand(
      "similarity", "Scaled cosine similarities of images and texts, and the CLIP loss");
  similarity->add_flag("--paired", sim_args.paired,
                       "Image i goes with text i: add the contrastive loss");
  similarity->add_flag("--json", sim_args.json, "Print JSON");
  similarity
      ->add_option("--temperature", sim_args.temperature,
                   "Scale logits by 1/T instead of the model's logit scale")
      ->check(kTemperature);
  similarity->add_option("--images", sim_args.images, "Image files")->required();
  similarity->add_option("--texts", sim_args.texts, "Texts")->required();

  // classify
  ClassifyArgs cls_args;
  CLI::App* classify =
      app.add_subcommand("classify", "Zero-shot classification of images among labels");
  classify->add_option("images", cls_args.images, "Image files or folders")->required();
  classify->add_flag("--recursive,-r", cls_args.recursive,
                     "Descend into subfolders of folders");
  classify
      ->add_option("--images_per_request", cls_args.images_per_request,
                   "Images sent in each request: at most the server's "
                   "--max_items_per_request")
      ->capture_default_str()
      ->check(kPositive);
  // --labels and --templates take one argument each time they are given (repeat them
  // for more), so that the image paths after them stay images: a greedy option would
  // take `--labels cat,dog photo.jpg`'s photo.jpg as a third label.
  classify
      ->add_option("--labels", cls_args.labels,
                   "Candidate labels, comma-separated (a label with a comma: "
                   "--labels_file); repeat for more")
      ->delimiter(',')
      ->allow_extra_args(false);
  classify->add_option("--labels_file", cls_args.labels_file,
                       "Read labels from a file, one per line, commas kept (blank lines "
                       "skipped; - = stdin); after those of --labels");
  classify
      ->add_option("--templates", cls_args.templates,
                   "Prompt template with {} for the label; repeat for more, whose "
                   "embeddings are averaged (default \"a photo of a {}.\")")
      ->allow_extra_args(false);
  classify->add_option("--top_k", cls_args.top_k, "Labels per image (default 5)")
      ->check(kNonNegative);
  classify
      ->add_option("--temperature", cls_args.temperature,
                   "Scale logits by 1/T instead of the model's logit scale")
      ->check(kTemperature);
  classify->add_flag("--json", cls_args.json, "Print JSON");

  // tokenize
  TokenizeArgs tok_args;
  CLI::App* tokenize =
      app.add_subcommand("tokenize", "Token ids of texts (start/end included)");
  tokenize->add_flag("--json", tok_args.json, "Print JSON");
  tokenize
      ->add_flag("--truncate", tok_args.truncate,
                 "Cut texts longer than the context (--truncate=false: fail instead)")
      ->capture_default_str();
  tokenize->add_option(
      "--file,-f", tok_args.file,
      "Read texts from a file, one per line (blank lines skipped; - = stdin)");
  AddTextsPerRequestOption(tokenize, &tok_args.texts_per_request);
  tokenize->add_option("texts", tok_args.texts, "Texts to tokenize");

  // info
  bool info_json = false;
  CLI::App* info = app.add_subcommand("info", "Describe the served model");
  info->add_flag("--json", info_json, "Print JSON (snake_case keys as in the proto)");

  // health
  CLI::App* health =
      app.add_subcommand("health", "Exit 0 when the server reports SERVING, 1 otherwise");
  std::string service;
  health->add_option("--service", service, "Service to check (default: whole server)");

  // bench
  BenchArgs bench_args;
  CLI::App* bench = app.add_subcommand(
      "bench", "Closed-loop load generator: N callers, each sending when answered");
  bench->add_option("--modality", bench_args.modality, "image or text")
      ->required()
      ->check(CLI::IsMember({"image", "text"}));
  bench->add_option("--concurrency,-c", bench_args.concurrency, "Parallel callers")
      ->capture_default_str()
      ->check(kPositive);
  CLI::Option* duration_opt = bench->add_option(
      "--duration", bench_args.duration, "How long to run: 30s, 2m, ... (default 10s)");
  CLI::Option* requests_opt =
      bench->add_option("--requests,-n", bench_args.requests, "Stop after N requests")
          ->check(kPositive);
  duration_opt->excludes(requests_opt);
  bench
      ->add_option("--items_per_request,-k", bench_args.items_per_request,
                   "Images or texts per request")
      ->capture_default_str()
      ->check(kPositive);
  bench->add_option("--images", bench_args.images,
                    "Folder of images to send (default: synthetic 640x480 JPEG photos)");
  bench->add_flag("--recursive,-r", bench_args.recursive,
                  "Also take the images of --images' subfolders");
  bench->add_option("--texts_file", bench_args.texts_file,
                    "Texts to send, one per line (default: built-in captions). They "
                    "repeat: run the server with --text_cache_mb=0, or pass "
                    "--unique_texts, to measure its model, not its text cache");
  bench->add_flag("--unique_texts", bench_args.unique_texts,
                  "Append three common words to each text sent, different for every text "
                  "of the run (from a random start), so none repeats and the server's "
                  "text cache answers none; each text is 3 tokens longer");
  bench->add_flag("--json", bench_args.json, "Print JSON");

  if (absl::Status spaced = RefuseSpacedFlagValues(argc, argv); !spaced.ok()) {
    return Fail(spaced);
  }
  if (absl::Status joined = RefuseJoinedShortOptions(argc, argv); !joined.ok()) {
    return Fail(joined);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and the like print and exit 0; mistakes read as every other failure.
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success))
      return app.exit(e);
    // A mistyped subcommand is left over as an extra argument, and CLI11 reports only
    // that none was given.
    const std::vector<std::string> left = app.remaining();
    if (app.get_subcommands().empty() && !left.empty() &&
        !absl::StartsWith(left[0], "-")) {
      std::vector<std::string> names;
      for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
        names.push_back(sub->get_name());
      }
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("unknown subcommand '", left[0], "': give one of ",
                       absl::StrJoin(names, ", "), " (see --help)")));
    }
    return Fail(absl::InvalidArgumentError(absl::StrCat(e.what(), " (see --help)")));
  }
  options.deadline = absl::Milliseconds(deadline_ms);
  options.max_receive_message_bytes = static_cast<int>(max_message_bytes);
  const uint64_t max_file_bytes = MaxImageFileBytes(max_message_bytes);
  image_args.max_file_bytes = max_file_bytes;
  sim_args.max_file_bytes = max_file_bytes;
  cls_args.max_file_bytes = max_file_bytes;
  bench_args.max_file_bytes = max_file_bytes;
  options.tls.enabled = tls || !tls_ca.empty() || !tls_cert.empty() ||
                        !options.tls.server_name_override.empty();
  for (auto [path, pem] : {std::pair{&tls_ca, &options.tls.root_certificates_pem},
                           std::pair{&tls_cert, &options.tls.cert_chain_pem},
                           std::pair{&tls_key, &options.tls.private_key_pem}}) {
    if (path->empty()) continue;
    absl::StatusOr<std::string> bytes = ReadFileBytes(*path, kMaxPemFileBytes);
    if (!bytes.ok()) return Fail(bytes.status());
    *pem = *std::move(bytes);
  }
  if (!token_file.empty()) {
    absl::StatusOr<std::string> token = ReadTokenFile(token_file);
    if (!token.ok()) return Fail(token.status());
    options.bearer_token = *std::move(token);
  }

  auto client = ClipClient::Create(options);
  if (!client.ok()) return Fail(client.status());
  ClipClient& c = **client;
  const std::string& target = options.target;

  int exit_code = EXIT_FAILURE;
  if (embed_text->parsed()) exit_code = EmbedText(c, target, text_args);
  if (embed_image->parsed()) exit_code = EmbedImage(c, target, image_args);
  if (similarity->parsed()) exit_code = Similarity(c, target, sim_args);
  if (classify->parsed()) exit_code = Classify(c, target, cls_args);
  if (tokenize->parsed()) exit_code = Tokenize(c, target, tok_args);
  if (info->parsed()) exit_code = Info(c, target, info_json);
  if (health->parsed()) exit_code = Health(c, target, service);
  if (bench->parsed()) exit_code = Bench(c, target, options.deadline, bench_args);
  // Output that did not reach standard output (a full disk, a closed pipe) is a
  // failure, not a success with nothing to show.
  std::cout.flush();
  if (!std::cout && exit_code == EXIT_SUCCESS) {
    return Fail(absl::DataLossError("cannot write to standard output"));
  }
  return exit_code;
}
