// clip_server: serves CLIP embeddings over gRPC.
//
// Life cycle: parse flags -> load the model and tokenizer -> start the engine (warm-up
// included) -> open the port, health SERVING -> wait for SIGINT or SIGTERM -> health
// NOT_SERVING, stop accepting, let calls in flight finish within --shutdown_grace_s ->
// stop the engine -> exit 0. A start-up failure exits 1 with the reason on stderr. A
// signal during start-up, or a second one during the drain, exits at once with 128 +
// the signal's number (143 for SIGTERM).

// c10/util/Logging.h before glog: a LibTorch built without glog (NVIDIA's and
// PyTorch's archives) defines its own LOG and CHECK there, and whichever header comes
// last wins. After glog, c10's would take this file's LOG() lines (dropping INFO and
// bypassing the JSON log sink); before it, glog's replace them. Debian's LibTorch uses
// glog, so there c10's header just includes it. (The model and engine libraries
// include torch first through their precompiled header.)
#include <c10/util/Logging.h>
#include <signal.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "server/common/clock.h"
#include "server/common/cpu_limit.h"
#include "server/common/idle_heap_trimmer.h"
#include "server/common/small_file.h"
#include "server/common/status_macros.h"
#include "server/engine/caching_engine.h"
#include "server/engine/embedding_engine.h"
#include "server/logging/grpc_log_forwarding.h"
#include "server/logging/json_log_sink.h"
#include "server/metrics/gpu_stats.h"
#include "server/metrics/metrics.h"
#include "server/metrics/metrics_http_server.h"
#include "server/model/blas_kernel.h"
#include "server/model/device.h"
#include "server/model/model_config.h"
#include "server/model/model_loader.h"
#include "server/service/bearer_auth.h"
#include "server/service/clip_server.h"
#include "server/service/clip_service.h"
#include "server/service/request_memory_budget.h"
#include "server/service/request_validation.h"
#include "server/service/server_credentials.h"
#include "server/tokenizer/bpe_tokenizer.h"
#include "server/tokenizer/bpe_vocabulary.h"
#include "server/tokenizer/builtin_vocabulary.h"

ABSL_FLAG(std::string, host, "0.0.0.0",
          "Address to listen on: 0.0.0.0 or [::] (every interface, IPv4 and IPv6: gRPC "
          "listens dual-stack on either wildcard), 127.0.0.1, or one address.");
ABSL_FLAG(int32_t, port, 50051, "gRPC port; 0 picks a free one and logs it.");
ABSL_FLAG(
    std::string, model, "demo:ViT-B-32",
    "The model: demo:PRESET (seeded random weights; presets RN50, RN101, RN50x4, "
    "RN50x16, RN50x64, ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336), or a checkpoint: "
    "an OpenAI .pt, a torch.save state dict, a .safetensors file, an open_clip "
    "directory or a Hugging Face CLIP directory.");
ABSL_FLAG(
    std::string, model_config, "",
    "open_clip JSON config for a bare state dict whose architecture cannot be "
    "inferred from its shapes: a head width other than 64, or GELU (\"quick_gelu\": "
    "false) where QuickGELU, OpenAI's, is assumed.");
ABSL_FLAG(std::string, tokenizer, "",
          "Tokenizer files: a bpe_simple_vocab_16e6.txt.gz, or a directory with "
          "vocab.json + merges.txt, or with a tokenizer.json (its BPE vocabulary), or "
          "that tokenizer.json. "
          "Default: the files next to the checkpoint, else the built-in CLIP vocabulary "
          "(which demo models use too).");
ABSL_FLAG(std::string, device, "cpu", "Where the model runs: cpu, cuda or cuda:N.");
ABSL_FLAG(
    std::string, precision, "auto",
    "fp32, bf16, fp16 (CUDA only), int8 (CPU only: every linear product of the "
    "transformers in int8, the rest as auto picks) or auto: bf16 on CPUs with AMX-BF16 "
    "or AMD's AVX512-BF16, fp32 on other CPUs, fp16 on CUDA. Outputs are always "
    "fp32.");
ABSL_FLAG(int32_t, max_batch_size, 32, "Most items in one model run, per modality.");
ABSL_FLAG(double, max_queue_delay_ms, 2.0,
          "How long a partial batch waits for company while more items are still being "
          "preprocessed; with none on their way it runs at once. 0 to 60000.");
ABSL_FLAG(int32_t, max_queue_size, 1024,
          "Items waiting per modality before requests get RESOURCE_EXHAUSTED; at least "
          "--max_items_per_request and --max_batch_size.");
ABSL_FLAG(int32_t, workers, 0,
          "Batch workers per modality, 0 to 64; 0 picks by device: 1 on the CPU, 2 per "
          "GPU (each with its own CUDA stream). On the CPU every batch runs on one "
          "model runner, so more than 1 only queues batches there; it takes text "
          "batches first, but never more than one ahead of a waiting image batch.");
ABSL_FLAG(int32_t, intra_op_threads, 0,
          "LibTorch threads per model run, 0 to 1024; 0 = one per CPU this process may "
          "use: its affinity mask, or its cgroup's CPU limit (docker --cpus, a "
          "Kubernetes limit) where smaller, rounded up.");
ABSL_FLAG(int32_t, preprocess_threads, 2,
          "Threads decoding images and tokenizing texts, 1 to 256.");
ABSL_FLAG(bool, resize_on_device, false,
          "Resize, crop and normalize decoded images on the model's device (the same "
          "bits as on the CPU), so the preprocessing threads only decode. For GPUs.");
ABSL_FLAG(bool, exif_orientation, false,
          "Turn photos upright by their EXIF orientation tag (JPEG, PNG, WebP) before "
          "resizing, as Pillow's ImageOps.exif_transpose() does. Off by default, as in "
          "CLIP's reference preprocessing, which ignores the tag.");
ABSL_FLAG(double, device_resize_buffer_mb, 1024,
          "With --resize_on_device (another value is refused without it): most MiB of "
          "decoded images "
          "waiting for their batch; past it, images are resized on the CPU instead.");
ABSL_FLAG(int32_t, max_items_per_request, 256, "Most images or texts in one request.");
ABSL_FLAG(int64_t, max_image_pixels, 40'000'000,
          "Largest image accepted (width x height, at most 1000000000), checked before "
          "decoding.");
ABSL_FLAG(int32_t, max_text_bytes, 16384, "Longest text accepted, in UTF-8 bytes.");
ABSL_FLAG(int32_t, max_message_bytes, 64 << 20,
          "Largest request or response message in bytes. A unary call whose response "
          "would be larger fails with RESOURCE_EXHAUSTED giving its size. At least the "
          "largest one-item response of the model (checked after the load).");
ABSL_FLAG(double, max_request_memory_mb, 256,
          "Most MiB of requests held by calls in flight, with the responses they ask "
          "for until their clients have read them; a call past it is refused at once "
          "with RESOURCE_EXHAUSTED and a RetryInfo. At least --max_message_bytes; 0 = no "
          "limit. The process holds up to about 3x this for requests.");
ABSL_FLAG(double, max_request_memory_per_client_mb, 0,
          "Most MiB of requests (and the responses they ask for) one client host may "
          "hold in flight, within --max_request_memory_mb; past it its calls are refused "
          "the same way. At least --max_message_bytes and at most "
          "--max_request_memory_mb (when set); 0 = no per-client limit. Keep 0 behind a "
          "proxy or sidecar, where every call comes from the proxy's address.");
ABSL_FLAG(double, max_connection_age_s, 0,
          "Send each client connection GOAWAY once it is this many seconds old (gRPC "
          "adds +-10% jitter): clients reconnect for their next calls and spread "
          "over replicas added since they connected. 0 = never.");
ABSL_FLAG(double, max_connection_age_grace_s, 0,
          "After --max_connection_age_s, seconds that calls in flight on the old "
          "connection get to finish before they are cancelled (UNAVAILABLE, which "
          "clip_client retries). 0 = no limit. Another value is refused without "
          "--max_connection_age_s.");
ABSL_FLAG(double, max_connection_idle_s, 0,
          "Send GOAWAY to a connection with no call in flight for this many seconds. "
          "0 = never.");
ABSL_FLAG(double, keepalive_time_s, 60,
          "Ping each connection, idle or not, after this many seconds without a ping, "
          "and close it when no answer comes within --keepalive_timeout_s, cancelling "
          "its calls: frees what a client that vanished without closing its socket "
          "held. 0 = no pings.");
ABSL_FLAG(double, keepalive_timeout_s, 20,
          "Seconds a keepalive ping may go unanswered before the connection is closed.");
ABSL_FLAG(double, min_client_ping_interval_s, 10,
          "Clients may send keepalive pings this often, with or without calls in "
          "flight; one that pings more often is sent away with GOAWAY "
          "\"too_many_pings\". 0 = any rate.");
ABSL_FLAG(int32_t, max_concurrent_streams, 256,
          "Most calls one client connection may have open at once; its further calls "
          "wait on the client's side until one ends. 0 = no limit.");
ABSL_FLAG(double, text_cache_mb, 64,
          "Text embeddings remembered (LRU, MiB); a repeated text skips the model. "
          "0 disables.");
ABSL_FLAG(double, image_cache_mb, 0,
          "Image embeddings remembered (LRU, MiB), keyed by the image's bytes. "
          "0 (default) disables.");
ABSL_FLAG(std::string, blas_kernel, "auto",
          "auto: when OpenBLAS runs fp32 kernels older than this CPU supports (it "
          "misdetects some newer CPUs; OPENBLAS_CORETYPE may pin an old one), restart "
          "once at startup with OPENBLAS_CORETYPE set to the best one. keep: leave "
          "OpenBLAS's choice.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the server (its certificate first). With --tls_key "
          "the port speaks TLS only; without both it is plaintext.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert (unencrypted).");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificate(s): require every client to present a certificate signed "
          "by one of them (mutual TLS). Needs --tls_cert and --tls_key.");
ABSL_FLAG(std::string, auth_token_file, "",
          "File of accepted bearer tokens, one per line. When set, every ClipService "
          "call must send 'authorization: Bearer <token>' or gets UNAUTHENTICATED; "
          "health checks and reflection need none. Read once at start-up.");
ABSL_FLAG(bool, reflection, true,
          "Serve gRPC server reflection (grpcurl's list and describe). It needs no "
          "token, and gRPC's own parser keeps every unknown field of its requests: a "
          "hostile --max_message_bytes request can take some 50 times that in memory. "
          "Turn it off where untrusted clients reach the port.");
ABSL_FLAG(std::string, metrics_host, "0.0.0.0",
          "Address the HTTP endpoint (/metrics, /healthz, /readyz) listens on. 0.0.0.0 "
          "is IPv4 only; :: (or [::]) is IPv6 and IPv4 (where the host has IPv6).");
ABSL_FLAG(int32_t, metrics_port, 9090,
          "HTTP port for /metrics (Prometheus), /healthz and /readyz; 0 picks a free "
          "one and logs it; -1 turns the endpoint off.");
ABSL_FLAG(int32_t, slow_request_ms, 1000,
          "Log one WARNING line for each successful call (EmbedStream excepted) that "
          "takes at least this many milliseconds; 0 turns it off. Failed calls are "
          "logged whatever their time (at most 20 WARNING lines a second; a refused "
          "token, one line per 10 s).");
ABSL_FLAG(std::string, log_format, "text",
          "text (glog's lines) or json (one JSON object per line on stderr: time, "
          "severity, source, thread, message and the line's fields).");
ABSL_FLAG(double, batch_watchdog_s, 120.0,
          "A batch running longer than this many seconds (a hung kernel or driver) turns "
          "health NOT_SERVING, so that an orchestrator restarts the server, until the "
          "batch finishes; 0 turns the watchdog off. Raise it for models whose largest "
          "batch takes longer on this machine.");
ABSL_FLAG(double, exit_after_unhealthy_s, 0.0,
          "Exit with status 70 once health has been NOT_SERVING for this many seconds "
          "for a reason of the engine's (the watchdog's stuck batch, a failed device), "
          "not a drain, so that a restart policy replaces the process where nothing "
          "acts on health (Docker and Compose restart an exited container, never an "
          "unhealthy one); 0 (the default) never exits: Kubernetes' liveness probe "
          "restarts it.");
ABSL_FLAG(
    double, shutdown_grace_s, 30.0,
    "On SIGTERM, SIGINT or SIGHUP, seconds that calls in flight get to finish "
    "before they are cancelled; the batch running then still finishes. Keep it below "
    "Kubernetes' terminationGracePeriodSeconds minus any preStop sleep and one "
    "batch's run time.");

namespace clipserve {
namespace {

// Whether the command line asks for --help (or --helpshort), which Abseil 20220623
// answers with exit status 1, as if help were a failure: a script that checks a binary
// with `clip_server --help` would read it as broken. Other usage flags (--helpfull,
// --helpmatch, ...) stay Abseil's.
bool AsksForHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") return false;
    if (arg == "--help" || arg == "-help" || arg == "--helpshort" ||
        arg == "-helpshort") {
      return true;
    }
  }
  return false;
}

// Abseil's --help in its format ("--name (help); default: value;"), for the flags of
// this file, sorted by name.
void PrintHelp(std::ostream& out) {
  out << absl::ProgramUsageMessage() << "\n\n  Flags from server/main.cc:\n";
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (absl::EndsWith(flag->Filename(), "server/main.cc")) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const auto* a, const auto* b) { return a->Name() < b->Name(); });
  for (const absl::CommandLineFlag* flag : flags) {
    const std::string value = flag->DefaultValue();
    out << "    --" << flag->Name() << " (" << flag->Help() << "); default: "
        << (flag->IsOfType<std::string>() ? absl::StrCat("\"", value, "\"") : value)
        << ";\n";
  }
}

// The exit status after --exit_after_unhealthy_s (EX_SOFTWARE in sysexits.h).
constexpr int kExitUnhealthy = 70;

// A size flag in MiB as bytes; INVALID_ARGUMENT when negative, absurd, or so small
// that it would round to 0 bytes (which means "off" or "no limit").
absl::StatusOr<size_t> MebibytesFlag(absl::string_view name,
                                     const absl::Flag<double>& flag) {
  const double mib = absl::GetFlag(flag);
  if (!(mib >= 0 && mib <= 1 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be between 0 and 1048576, not ", mib));
  }
  const auto bytes = static_cast<size_t>(mib * (1 << 20));
  if (mib > 0 && bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", mib, " is less than a byte; 0 turns it off"));
  }
  return bytes;
}

// Whether --`name` was given a value other than its default (on the command line or in
// a --flagfile). A flag that only tunes another feature is refused without it, not
// ignored: the mistake would otherwise show only once the feature is switched on.
bool FlagChanged(absl::string_view name) {
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  return flag != nullptr && flag->CurrentValue() != flag->DefaultValue();
}

// INVALID_ARGUMENT when --`name` was changed although `feature` is off.
absl::Status CheckTuningFlag(absl::string_view name, bool feature_on,
                             absl::string_view feature) {
  if (feature_on || !FlagChanged(name)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", name, " does nothing without ",
                                                 feature, ": drop it or set both"));
}

// A duration flag in seconds: 0 means `zero` (never, or no limit) where that is
// given and is refused otherwise; INVALID_ARGUMENT when negative, NaN or over 2,000,000
// seconds (gRPC counts milliseconds in an int).
absl::StatusOr<absl::Duration> SecondsFlag(absl::string_view name,
                                           const absl::Flag<double>& flag,
                                           std::optional<absl::Duration> zero) {
  const double seconds = absl::GetFlag(flag);
  if (!(seconds >= 0 && seconds <= 2'000'000) || (seconds == 0 && !zero.has_value())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", name, zero.has_value() ? " must be 0 to " : " must be above 0 and at most ",
        "2000000 seconds, not ", seconds));
  }
  if (seconds == 0) return *zero;
  if (absl::Seconds(seconds) <= absl::ZeroDuration()) {  // below absl's resolution
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", seconds, " rounds to 0 seconds"));
  }
  return absl::Seconds(seconds);
}

// INVALID_ARGUMENT naming --`name` unless lo <= its value <= hi.
absl::Status CheckIntFlag(absl::string_view name, int64_t value, int64_t lo, int64_t hi) {
  if (value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("--", name, " must be ", lo, " to ", hi, ", got ", value));
}

// NOT_FOUND when --tokenizer names nothing there: checked before the model load too.
// Not the folder it would be in: a mistyped name must not load whatever tokenizer
// lies beside it. A folder on the way that may not be searched is PERMISSION_DENIED.
absl::Status CheckTokenizerFlagExists() {
  const std::string flag = absl::GetFlag(FLAGS_tokenizer);
  if (flag.empty()) return absl::OkStatus();
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(flag, error);
  if (std::filesystem::exists(status)) return absl::OkStatus();
  if (status.type() == std::filesystem::file_type::not_found) {
    return absl::NotFoundError(
        absl::StrCat("--tokenizer=", flag, ": no such file or folder"));
  }
  return FileError(error ? error.value() : ENOENT, "tokenizer (--tokenizer)", flag);
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> MakeTokenizer(const LoadedModel& loaded) {
  BpeTokenizer::Options options;
  options.context_length = loaded.model->config().text.context_length;
  options.max_input_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_text_bytes));
  const std::string flag = absl::GetFlag(FLAGS_tokenizer);
  if (!flag.empty()) {
    namespace fs = std::filesystem;
    std::error_code error;
    CLIPSERVE_RETURN_IF_ERROR(CheckTokenizerFlagExists());
    const fs::file_status status = fs::status(flag, error);
    if (fs::is_directory(status)) return LoadTokenizerNextTo(flag, options);
    const fs::path name = fs::path(flag).filename();
    if (absl::EndsWith(flag, ".gz")) {
      CLIPSERVE_ASSIGN_OR_RETURN(BpeVocabulary vocab, LoadOpenAiVocabulary(flag));
      return CreateTokenizerFrom(std::move(vocab), options, flag);
    }
    // Named itself, it is read even where vocab.json + merges.txt lie beside it.
    if (name == fs::path(std::string(kHuggingFaceTokenizerFileName))) {
      CLIPSERVE_ASSIGN_OR_RETURN(BpeVocabulary vocab, LoadHuggingFaceTokenizerJson(flag));
      return CreateTokenizerFrom(std::move(vocab), options, flag);
    }
    if (name == fs::path(std::string(kHuggingFaceVocabFileName)) ||
        name == fs::path(std::string(kHuggingFaceMergesFileName))) {
      // The pair, never another tokenizer of that folder.
      const fs::path folder = fs::path(flag).parent_path();
      const std::string vocab =
          (folder / std::string(kHuggingFaceVocabFileName)).string();
      const std::string merges =
          (folder / std::string(kHuggingFaceMergesFileName)).string();
      for (const std::string& file : {vocab, merges}) {
        CLIPSERVE_ASSIGN_OR_RETURN(const bool present,
                                   IsRegularFile(file, "tokenizer file"));
        if (!present) {
          return absl::NotFoundError(absl::StrCat("--tokenizer=", flag, ": ", file,
                                                  ", its other half, is not there"));
        }
      }
      return LoadHuggingFacePair(folder.string(), options);
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "--tokenizer=", flag, " is no tokenizer file: give CLIP's ", kOpenAiVocabFileName,
        " (or another .gz of that format), a ", kHuggingFaceTokenizerFileName, ", a ",
        kHuggingFaceVocabFileName, " or ", kHuggingFaceMergesFileName,
        " (the other beside it), or a folder holding them"));
  }
  // A demo model has no files; it tokenizes with CLIP's own vocabulary, so token
  // counts, truncation and text costs are those of a real deployment.
  if (!loaded.random_weights) {
    auto next_to = LoadTokenizerNextTo(loaded.directory, options);
    if (next_to.ok() || next_to.status().code() != absl::StatusCode::kNotFound)
      return next_to;
    LOG(INFO) << "no tokenizer files next to the checkpoint; using the built-in CLIP "
                 "vocabulary";
  }
  CLIPSERVE_ASSIGN_OR_RETURN(BpeVocabulary vocab, BuiltinClipVocabulary());
  return BpeTokenizer::Create(std::move(vocab), options);
}

// Under --blas_kernel=auto, replaces this process (same pid, same arguments) with one
// whose OpenBLAS runs the best fp32 kernels for this CPU, when it runs weaker ones:
// OpenBLAS reads OPENBLAS_CORETYPE only as it loads, before main(). Returns only when
// no restart is needed, or when it failed (then logged).
absl::Status MaybeRestartForBetterBlas(char** argv) {
  constexpr char kRestartedFrom[] = "CLIPSERVE_BLAS_RESTARTED_FROM";
  const std::string mode = absl::GetFlag(FLAGS_blas_kernel);
  if (mode != "auto" && mode != "keep") {
    return absl::InvalidArgumentError(
        absl::StrCat("--blas_kernel must be auto or keep, not '", mode, "'"));
  }
  const std::string current = OpenBlasCoreName();
  if (current.empty()) return absl::OkStatus();  // not OpenBLAS: nothing to choose
  if (const char* from = std::getenv(kRestartedFrom); from != nullptr) {
    LOG(INFO) << "OpenBLAS fp32 kernels: " << current << " (restarted from " << from
              << ")";
    unsetenv(kRestartedFrom);
    return absl::OkStatus();
  }
  const std::optional<std::string> better =
      mode == "auto" ? BetterOpenBlasCore(current, ReadProcCpuinfo()) : std::nullopt;
  if (!better.has_value()) {
    LOG(INFO) << "OpenBLAS fp32 kernels: " << current;
    return absl::OkStatus();
  }
  // Expected with Debian's OpenBLAS on CPUs newer than it knows: not a WARNING.
  LOG(INFO) << "OpenBLAS runs " << current
            << " fp32 kernels, older than this CPU supports; restarting with "
               "OPENBLAS_CORETYPE="
            << *better << " (--blas_kernel=keep prevents this)";
  setenv("OPENBLAS_CORETYPE", better->c_str(), /*overwrite=*/1);
  setenv(kRestartedFrom, current.c_str(), /*overwrite=*/1);
  google::FlushLogFiles(google::GLOG_INFO);
  execv("/proc/self/exe", argv);
  PLOG(WARNING) << "restart failed; keeping " << current << " kernels";
  unsetenv(kRestartedFrom);
  return absl::OkStatus();
}

// Blocks SIGINT, SIGTERM and SIGHUP in this thread and every thread started later, so
// they are received synchronously below rather than in an async-signal handler. A
// SIGHUP (the terminal or SSH session of a server started by hand closed) stops it as
// SIGTERM does, with a drain, rather than killing it mid-call; unless it was ignored
// when the server started (`nohup`): a blocked signal is queued even when ignored, and
// sigwait() would then take it.
sigset_t BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  struct sigaction hangup {};
  if (sigaction(SIGHUP, nullptr, &hangup) != 0 || hangup.sa_handler != SIG_IGN) {
    sigaddset(&set, SIGHUP);
  }
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

const char* TerminationSignalName(int signal) {
  return signal == SIGTERM ? "SIGTERM" : signal == SIGHUP ? "SIGHUP" : "SIGINT";
}

// Takes SIGTERM, SIGINT and SIGHUP (blocked in every thread, so delivered only here) for
// the whole run. Before Serving() a signal exits at once with 128 + its number: nothing
// is running yet that could be drained, and a model load can take minutes. While serving
// the first one asks Run() to drain; a second one during the drain exits at once.
class TerminationSignals {
 public:
  explicit TerminationSignals(const sigset_t& set)
      : set_(set), thread_([this] { Loop(); }) {}
  ~TerminationSignals() {
    done_.store(true);
    pthread_kill(thread_.native_handle(), SIGTERM);  // wakes sigwait()
    thread_.join();
  }

  void Serving() { serving_.store(true); }

  // The signal that asked for a drain, or 0 when none came within `timeout` (on the
  // monotonic clock: a step of the wall clock does not stall the caller's loop).
  int WaitForDrain(absl::Duration timeout) {
    RealClock* clock = RealClock::Get();
    const absl::Time deadline = clock->Now() + timeout;
    absl::MutexLock lock(&mu_);
    while (signal_ == 0 && !clock->WaitWithDeadline(&mu_, &drain_, deadline)) {
    }
    return signal_;
  }

 private:
  void Loop() {
    while (true) {
      int signal = 0;
      if (sigwait(&set_, &signal) != 0) continue;
      if (done_.load()) return;
      const char* name = TerminationSignalName(signal);
      if (!serving_.load()) {
        LOG(WARNING) << "received " << name << " during start-up: exiting";
        _exit(128 + signal);
      }
      {
        absl::MutexLock lock(&mu_);
        if (signal_ != 0) {
          LOG(WARNING) << "received " << name << " again while draining: exiting now";
          _exit(128 + signal);
        }
        signal_ = signal;
      }
      drain_.SignalAll();
    }
  }

  const sigset_t set_;
  std::atomic<bool> serving_{false};
  std::atomic<bool> done_{false};
  absl::Mutex mu_;
  int signal_ ABSL_GUARDED_BY(mu_) = 0;  // the first signal while serving
  absl::CondVar drain_;                  // signalled when signal_ is set
  std::thread thread_;                   // last: it starts reading the members above
};

// Raises the soft limit on open files to the hard one: every client connection takes a
// descriptor, and the usual soft default (1024) is reached long before the machine's
// memory, after which connections and probes alike are refused.
void RaiseOpenFilesLimit() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  const rlim_t before = limit.rlim_cur;
  limit.rlim_cur = limit.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    PLOG(WARNING) << "cannot raise the open files limit from " << before;
    return;
  }
  LOG(INFO) << "open files limit raised from " << before << " to " << limit.rlim_cur;
}

absl::Status Run() {
  TerminationSignals signals(BlockTerminationSignals());
  const absl::Time start = RealClock::Get()->Now();
  RaiseOpenFilesLimit();

  // Flags that need no model are checked first: a mistake there fails in a moment,
  // not after the model load.
  if (absl::GetFlag(FLAGS_max_message_bytes) <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_message_bytes must be > 0, got ", absl::GetFlag(FLAGS_max_message_bytes)));
  }
  CLIPSERVE_ASSIGN_OR_RETURN(const size_t text_cache_bytes,
                             MebibytesFlag("text_cache_mb", FLAGS_text_cache_mb));
  CLIPSERVE_ASSIGN_OR_RETURN(
      const size_t request_memory_bytes,
      MebibytesFlag("max_request_memory_mb", FLAGS_max_request_memory_mb));
  CLIPSERVE_ASSIGN_OR_RETURN(const size_t request_memory_per_client_bytes,
                             MebibytesFlag("max_request_memory_per_client_mb",
                                           FLAGS_max_request_memory_per_client_mb));
  if (absl::Status status = ValidateRequestMemoryLimit(
          static_cast<int64_t>(request_memory_bytes),
          absl::GetFlag(FLAGS_max_message_bytes),
          static_cast<int64_t>(request_memory_per_client_bytes));
      !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_request_memory_mb, --max_request_memory_per_client_mb and "
                     "--max_message_bytes: ",
                     status.message()));
  }
  CLIPSERVE_ASSIGN_OR_RETURN(const size_t image_cache_bytes,
                             MebibytesFlag("image_cache_mb", FLAGS_image_cache_mb));
  CLIPSERVE_ASSIGN_OR_RETURN(
      const size_t resize_buffer_bytes,
      MebibytesFlag("device_resize_buffer_mb", FLAGS_device_resize_buffer_mb));
  CLIPSERVE_RETURN_IF_ERROR(CheckTuningFlag("device_resize_buffer_mb",
                                            absl::GetFlag(FLAGS_resize_on_device),
                                            "--resize_on_device"));
  const double grace_s = absl::GetFlag(FLAGS_shutdown_grace_s);
  if (!(grace_s >= 0 && grace_s <= 3600)) {  // NaN fails both
    return absl::InvalidArgumentError(
        absl::StrCat("--shutdown_grace_s must be 0 to 3600 seconds, got ", grace_s));
  }
  CLIPSERVE_ASSIGN_OR_RETURN(
      const absl::Duration watchdog_timeout,
      SecondsFlag("batch_watchdog_s", FLAGS_batch_watchdog_s, absl::InfiniteDuration()));
  CLIPSERVE_ASSIGN_OR_RETURN(
      const absl::Duration exit_after_unhealthy,
      SecondsFlag("exit_after_unhealthy_s", FLAGS_exit_after_unhealthy_s,
                  absl::InfiniteDuration()));
  ClipServerOptions server_options;
  CLIPSERVE_ASSIGN_OR_RETURN(
      server_options.max_connection_age,
      SecondsFlag("max_connection_age_s", FLAGS_max_connection_age_s,
                  absl::InfiniteDuration()));
  CLIPSERVE_ASSIGN_OR_RETURN(
      server_options.max_connection_age_grace,
      SecondsFlag("max_connection_age_grace_s", FLAGS_max_connection_age_grace_s,
                  absl::InfiniteDuration()));
  CLIPSERVE_RETURN_IF_ERROR(
      CheckTuningFlag("max_connection_age_grace_s",
                      server_options.max_connection_age != absl::InfiniteDuration(),
                      "--max_connection_age_s"));
  CLIPSERVE_ASSIGN_OR_RETURN(
      server_options.max_connection_idle,
      SecondsFlag("max_connection_idle_s", FLAGS_max_connection_idle_s,
                  absl::InfiniteDuration()));
  CLIPSERVE_ASSIGN_OR_RETURN(
      server_options.keepalive_time,
      SecondsFlag("keepalive_time_s", FLAGS_keepalive_time_s, absl::InfiniteDuration()));
  CLIPSERVE_ASSIGN_OR_RETURN(
      server_options.keepalive_timeout,
      SecondsFlag("keepalive_timeout_s", FLAGS_keepalive_timeout_s, std::nullopt));
  CLIPSERVE_RETURN_IF_ERROR(CheckTuningFlag(
      "keepalive_timeout_s", server_options.keepalive_time != absl::InfiniteDuration(),
      "pings (--keepalive_time_s above 0)"));
  CLIPSERVE_ASSIGN_OR_RETURN(
      server_options.min_client_ping_interval,
      SecondsFlag("min_client_ping_interval_s", FLAGS_min_client_ping_interval_s,
                  absl::ZeroDuration()));
  server_options.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  server_options.reflection = absl::GetFlag(FLAGS_reflection);
  if (server_options.max_concurrent_streams < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_concurrent_streams must not be negative (0 = no limit), got ",
                     server_options.max_concurrent_streams));
  }
  // Security flags first: a mistake there fails in a moment, not after the model load.
  ServerTlsFiles tls_files;
  tls_files.cert_file = absl::GetFlag(FLAGS_tls_cert);
  tls_files.key_file = absl::GetFlag(FLAGS_tls_key);
  tls_files.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  CLIPSERVE_ASSIGN_OR_RETURN(std::optional<ServerTlsConfig> tls,
                             LoadServerTlsConfig(tls_files));
  std::shared_ptr<const BearerAuthenticator> authenticator;
  if (!absl::GetFlag(FLAGS_auth_token_file).empty()) {
    CLIPSERVE_ASSIGN_OR_RETURN(authenticator, BearerAuthenticator::FromFile(
                                                  absl::GetFlag(FLAGS_auth_token_file)));
    if (!tls.has_value()) {
      LOG(WARNING) << "--auth_token_file without TLS: bearer tokens cross the network "
                      "in the clear; only do this behind a TLS-terminating proxy or "
                      "service mesh";
    }
  }
  const std::string security =
      absl::StrCat(" tls=",
                   !tls.has_value()             ? "off"
                   : tls->client_ca_pem.empty() ? "on"
                                                : "mutual",
                   " auth=",
                   authenticator == nullptr
                       ? "none"
                       : absl::StrCat("bearer(", authenticator->size(), " tokens)"));

  // The serving flags, checked now rather than after the model load.
  const int port = absl::GetFlag(FLAGS_port);
  CLIPSERVE_RETURN_IF_ERROR(CheckIntFlag("port", port, 0, 65535));
  CLIPSERVE_RETURN_IF_ERROR(
      CheckIntFlag("metrics_port", absl::GetFlag(FLAGS_metrics_port), -1, 65535));
  CLIPSERVE_RETURN_IF_ERROR(
      CheckTuningFlag("metrics_host", absl::GetFlag(FLAGS_metrics_port) >= 0,
                      "the endpoint (--metrics_port=-1 turns it off)"));
  // Thread counts past these are typing mistakes: each thread is a real one.
  CLIPSERVE_RETURN_IF_ERROR(CheckIntFlag("workers", absl::GetFlag(FLAGS_workers), 0, 64));
  CLIPSERVE_RETURN_IF_ERROR(CheckIntFlag(
      "preprocess_threads", absl::GetFlag(FLAGS_preprocess_threads), 1, 256));
  CLIPSERVE_RETURN_IF_ERROR(
      CheckIntFlag("intra_op_threads", absl::GetFlag(FLAGS_intra_op_threads), 0, 1024));
  if (const double delay_ms = absl::GetFlag(FLAGS_max_queue_delay_ms);
      !(delay_ms >= 0 && delay_ms <= 60'000)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_queue_delay_ms must be 0 to 60000 (a minute), got ", delay_ms));
  }
  // Checked by the libraries too, under their own names: the flags are named here.
  const std::pair<absl::string_view, int64_t> at_least_one[] = {
      {"max_batch_size", absl::GetFlag(FLAGS_max_batch_size)},
      {"max_items_per_request", absl::GetFlag(FLAGS_max_items_per_request)},
      {"max_text_bytes", absl::GetFlag(FLAGS_max_text_bytes)}};
  for (const auto& [name, value] : at_least_one) {
    if (value < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " must be at least 1, got ", value));
    }
  }
  CLIPSERVE_RETURN_IF_ERROR(CheckIntFlag("max_image_pixels",
                                         absl::GetFlag(FLAGS_max_image_pixels), 1,
                                         kMaxImagePixelsLimit));
  CLIPSERVE_RETURN_IF_ERROR(CheckTokenizerFlagExists());
  if (absl::GetFlag(FLAGS_max_queue_size) < absl::GetFlag(FLAGS_max_batch_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_queue_size (", absl::GetFlag(FLAGS_max_queue_size),
                     ") must be at least --max_batch_size (",
                     absl::GetFlag(FLAGS_max_batch_size), ")"));
  }
  if (const int cpus = UsableCpus(); absl::GetFlag(FLAGS_intra_op_threads) > cpus) {
    LOG(WARNING) << "--intra_op_threads=" << absl::GetFlag(FLAGS_intra_op_threads)
                 << " is more than the " << cpus
                 << " CPUs this process may use (its affinity and cgroup CPU limit): "
                    "OpenMP threads past the cores wait on each other and every batch "
                    "runs slower; 0 takes that count";
  }
  if (absl::GetFlag(FLAGS_max_items_per_request) == 1) {
    LOG(WARNING) << "--max_items_per_request=1 refuses every Classify call, which "
                    "needs at least two labels";
  }
  if (port != 0 && port == absl::GetFlag(FLAGS_metrics_port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--port and --metrics_port are both ", port));
  }
  // Taken or unusable, the port would otherwise be found only after the model load.
  if (absl::Status can_listen = CheckCanListen(absl::GetFlag(FLAGS_host), port);
      !can_listen.ok()) {
    return absl::Status(can_listen.code(),
                        absl::StrCat("--host and --port: ", can_listen.message()));
  }
  RequestLimits limits;
  limits.max_items_per_request = absl::GetFlag(FLAGS_max_items_per_request);
  limits.max_text_bytes = absl::GetFlag(FLAGS_max_text_bytes);
  limits.max_image_pixels = absl::GetFlag(FLAGS_max_image_pixels);
  limits.max_image_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  CLIPSERVE_RETURN_IF_ERROR(ValidateLimits(limits));

  // Metrics first: the engine and the service report into it, so it outlives both.
  Metrics metrics;
  // The HTTP endpoint answers from the start, before the model loads: /healthz says
  // the process is alive, /readyz 503 until gRPC serves (SetReadinessCheck below).
  std::unique_ptr<MetricsHttpServer> metrics_http;
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port >= 0) {
    MetricsHttpServerOptions http_options;
    http_options.host = absl::GetFlag(FLAGS_metrics_host);
    http_options.port = metrics_port;
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> created =
        MetricsHttpServer::Create(http_options, &metrics);
    if (!created.ok()) {
      return absl::Status(created.status().code(),
                          absl::StrCat("--metrics_host and --metrics_port: ",
                                       created.status().message()));
    }
    metrics_http = *std::move(created);
    LOG(INFO) << "metrics, /healthz and /readyz on http://" << metrics_http->authority();
  } else {
    LOG(INFO) << "metrics endpoint off (--metrics_port=" << metrics_port << ")";
  }
  const int slow_request_ms = absl::GetFlag(FLAGS_slow_request_ms);
  if (slow_request_ms < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--slow_request_ms must be >= 0, got ", slow_request_ms));
  }

  ModelLoadOptions load;
  absl::StatusOr<torch::Device> device = ParseDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    return absl::Status(device.status().code(),
                        absl::StrCat("--device: ", device.status().message()));
  }
  load.device = *device;
  const std::string cpuinfo = ReadProcCpuinfo();
  CLIPSERVE_ASSIGN_OR_RETURN(
      load.precision,
      ResolvePrecision(absl::GetFlag(FLAGS_precision), load.device, cpuinfo));
  if (absl::GetFlag(FLAGS_precision) == "auto" && !load.device.is_cuda()) {
    LOG(INFO) << "--precision=auto: "
              << (CpuInfoPrefersBf16(cpuinfo) ? "bf16 (AMX-BF16, or AMD's AVX512-BF16)"
                  : CpuInfoHasBf16(cpuinfo)
                      ? "fp32 (this CPU's bf16 is Intel's AVX512-BF16 without AMX, no "
                        "faster than fp32)"
                      : "fp32 (no bf16 instructions)");
  }
  // ClipModel::To() refuses both too, but only after the model load.
  if (!load.device.is_cuda() && load.precision == Precision::kFloat16) {
    return absl::InvalidArgumentError(
        "--precision=fp16 needs --device=cuda; use fp32, bf16 or int8 on the CPU");
  }
  if (load.device.is_cuda() && load.precision == Precision::kInt8) {
    return absl::InvalidArgumentError(
        "--precision=int8 runs on the CPU only; use fp16 or bf16 on CUDA");
  }
  if (load.precision == Precision::kInt8 && !CpuInfoHasInt8Dot(cpuinfo)) {
    return absl::InvalidArgumentError(
        "--precision=int8 needs int8 dot-product instructions (avx512_vnni, avx_vnni or "
        "amx_int8 in /proc/cpuinfo); without them oneDNN's int8 sums can saturate. Use "
        "--precision=auto");
  }
  // The transformers' linear products in int8, the rest as --precision=auto runs it.
  load.int8.bf16 = CpuInfoPrefersBf16(cpuinfo);
  CLIPSERVE_RETURN_IF_ERROR(CheckDeviceUsable(load.device));
  if (!load.device.is_cuda() && load.precision == Precision::kBFloat16 &&
      !CpuInfoHasBf16(cpuinfo)) {
    LOG(WARNING) << "--precision=bf16 on a CPU without AMX-BF16 or AVX512-BF16: "
                    "LibTorch emulates bf16 here, slower than fp32, and some of its "
                    "fallback kernels (convolutions, batched products) sum in bf16, so "
                    "embeddings may drift further from fp32; --precision=auto picks fp32 "
                    "on this CPU";
  } else if (!load.device.is_cuda() && load.precision == Precision::kBFloat16 &&
             !CpuInfoPrefersBf16(cpuinfo)) {
    LOG(WARNING) << "--precision=bf16 on a CPU whose only bf16 instruction is Intel's "
                    "AVX512-BF16 (no AMX): its bf16 products peak at the fp32 rate and "
                    "batches ran slower than fp32 on OpenBLAS's AVX-512 kernels; "
                    "--precision=auto picks fp32 on this CPU";
  }
  if (!absl::GetFlag(FLAGS_model_config).empty()) {
    load.config_path = absl::GetFlag(FLAGS_model_config);
  }
  EmbeddingEngineOptions engine_options;
  engine_options.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  engine_options.max_queue_delay =
      absl::Milliseconds(absl::GetFlag(FLAGS_max_queue_delay_ms));
  engine_options.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  // Room for the largest request's images, whatever --max_queue_size allows.
  engine_options.max_pending_preprocess =
      std::max(engine_options.max_pending_preprocess, engine_options.max_queue_size);
  engine_options.workers = absl::GetFlag(FLAGS_workers);
  engine_options.preprocess_threads = absl::GetFlag(FLAGS_preprocess_threads);
  engine_options.intra_op_threads = absl::GetFlag(FLAGS_intra_op_threads);
  engine_options.resize_on_device = absl::GetFlag(FLAGS_resize_on_device);
  engine_options.max_device_resize_bytes = static_cast<int64_t>(resize_buffer_bytes);
  engine_options.decode.max_pixels = absl::GetFlag(FLAGS_max_image_pixels);
  engine_options.decode.honor_exif_orientation = absl::GetFlag(FLAGS_exif_orientation);
  engine_options.decode.max_encoded_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  engine_options.observer = &metrics;
  engine_options.watchdog_timeout = watchdog_timeout;
  CLIPSERVE_RETURN_IF_ERROR(ValidateEmbeddingEngineOptions(engine_options));
  if (limits.max_items_per_request > engine_options.max_queue_size) {
    // ClipService::Create() refuses it too, but only after the model load.
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_items_per_request (", limits.max_items_per_request,
        ") must not exceed --max_queue_size (", engine_options.max_queue_size,
        "): a request's texts are queued together"));
  }

  // Loaded on a thread of its own: the OpenMP helper threads LibTorch starts for it
  // end with that thread, so the engine's model runner holds the process's only team
  // and its helpers keep spin-waiting between parallel regions (see ModelRunner).
  absl::StatusOr<LoadedModel> loading;
  LOG(INFO) << "loading model " << absl::GetFlag(FLAGS_model);
  std::thread([&] { loading = LoadModel(absl::GetFlag(FLAGS_model), load); }).join();
  CLIPSERVE_ASSIGN_OR_RETURN(LoadedModel loaded, std::move(loading));
  const ClipConfig& config = loaded.model->config();
  const std::string heads =
      absl::StrCat(config.vision.heads, " image",
                   config.text.arch == TextArch::kTransformer
                       ? absl::StrCat(" and ", config.text.heads, " text")
                       : "",
                   " heads");
  if (loaded.activation_assumed) {
    LOG(WARNING)
        << "the checkpoint's shapes cannot tell QuickGELU from GELU, nor the attention "
           "heads: running QuickGELU, as OpenAI's models do, with "
        << heads
        << ", as released models of these widths have; for a model of "
           "open_clip's own architectures (GELU) pass --model_config with "
           "\"quick_gelu\": false, or load its open_clip folder";
  } else if (loaded.heads_assumed) {
    LOG(INFO) << "an OpenAI archive does not record its attention heads: running "
              << heads
              << ", as OpenAI's released models of these widths have (width / 64); "
                 "for a model with other heads pass --model_config";
  }
  if (load.precision == Precision::kInt8 &&
      loaded.model->config().vision.arch == VisionArch::kModifiedResNet) {
    LOG(INFO) << "--precision=int8 quantizes transformer layers only: this ResNet "
                 "image tower runs as --precision="
              << (load.int8.bf16 ? "bf16" : "fp32") << " would";
  }
  CLIPSERVE_ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> tokenizer,
                             MakeTokenizer(loaded));
  LOG(INFO) << "tokenizer: "
            << (tokenizer->source().empty() ? "CLIP's built-in vocabulary"
                                            : tokenizer->source());
  CLIPSERVE_ASSIGN_OR_RETURN(
      std::unique_ptr<EmbeddingEngine> engine,
      EmbeddingEngine::Create(std::move(loaded), std::move(tokenizer), engine_options));

  CachingEngineOptions cache_options;
  cache_options.observer = &metrics;
  cache_options.text_cache_bytes = text_cache_bytes;
  cache_options.image_cache_bytes = image_cache_bytes;
  // Declared after `engine`, so destroyed before it; engine->Shutdown() below runs
  // every callback first.
  CachingEngine cached_engine(engine.get(), cache_options);

  // Known only now that the model is: the embedding width sets the smallest answer.
  if (const int64_t one_item = LargestOneItemResponseBytes(engine->description());
      absl::GetFlag(FLAGS_max_message_bytes) < one_item) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_message_bytes (", absl::GetFlag(FLAGS_max_message_bytes),
                     ") is less than a one-item response of this model takes (", one_item,
                     " bytes): no call could be answered"));
  }
  ClipServiceOptions service_options;
  service_options.limits = limits;
  service_options.authenticator = authenticator;
  service_options.metrics = &metrics;
  service_options.max_request_memory_bytes = static_cast<int64_t>(request_memory_bytes);
  service_options.max_request_memory_per_client_bytes =
      static_cast<int64_t>(request_memory_per_client_bytes);
  service_options.max_response_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  service_options.slow_request_threshold = absl::Milliseconds(slow_request_ms);
  // Classify's prompt limit has no flag: it follows a --max_queue_size set below it,
  // since ClipService refuses a limit that no single engine call could meet.
  service_options.max_classify_prompts =
      std::min(service_options.max_classify_prompts, cached_engine.max_texts_per_call());
  CLIPSERVE_ASSIGN_OR_RETURN(std::unique_ptr<ClipService> service,
                             ClipService::Create(&cached_engine, service_options));

  server_options.host = absl::GetFlag(FLAGS_host);
  server_options.port = port;
  server_options.max_receive_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  server_options.max_send_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  server_options.tls = std::move(tls);
  const ClipService& clip_service = *service;  // the server owns it from here on
  std::vector<std::unique_ptr<grpc::Service>> services;
  services.push_back(std::move(service));
  // From here on a signal drains instead of exiting: calls may arrive as soon as the
  // port opens, before the wait loop below.
  signals.Serving();
  CLIPSERVE_ASSIGN_OR_RETURN(std::unique_ptr<ClipServer> server,
                             ClipServer::Create(server_options, std::move(services)));

  const ModelDescription& d = engine->description();
  metrics.SetModelInfo(d);
  if (load.device.is_cuda()) {
    // GPU memory and utilization at each scrape, when the driver's NVML is there.
    auto nvml = OpenNvml();
    if (nvml.ok()) {
      // NVML numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES: find CUDA's
      // device by its PCI address; failing that, assume the numberings agree.
      int nvml_index = load.device.has_index() ? load.device.index() : 0;
      const absl::StatusOr<std::string> bus = PciBusId(load.device);
      const absl::StatusOr<int> found =
          bus.ok() ? (*nvml)->IndexOfPciBusId(*bus) : absl::StatusOr<int>(bus.status());
      if (found.ok()) {
        nvml_index = *found;
      } else {
        LOG(WARNING) << "GPU metrics read NVML's device " << nvml_index << " as "
                     << d.device << ", unverified: " << found.status();
      }
      metrics.WatchGpu(*std::move(nvml), nvml_index, d.device);
    } else {
      LOG(WARNING) << "no GPU metrics: " << nvml.status();
    }
  }
  if (metrics_http != nullptr) {
    // Ready while gRPC serves: not before the port opened, not while the engine is
    // unhealthy, not once draining began.
    metrics_http->SetReadinessCheck([server = server.get(), engine = engine.get()] {
      return server->serving() && engine->healthy();
    });
  }
  LOG(INFO) << "clip_server serving on " << server_options.host << ":" << server->port()
            << " model=" << d.name << (d.random_weights ? " (random demo weights)" : "")
            << " format=" << d.checkpoint_format << " vision=" << d.vision_architecture
            << " text=" << d.text_architecture << " embed_dim=" << d.embed_dim
            << " precision=" << d.precision << " device=" << d.device
            << " max_batch_size=" << engine_options.max_batch_size
            << " max_queue_delay_ms=" << absl::GetFlag(FLAGS_max_queue_delay_ms)
            << " max_queue_size=" << engine_options.max_queue_size
            << " workers=" << engine->workers()
            << " intra_op_threads=" << engine->intra_op_threads()
            << " preprocess_threads=" << engine_options.preprocess_threads
            << " resize_on_device="
            << (engine_options.resize_on_device ? "true" : "false")
            << " exif_orientation="
            << (engine_options.decode.honor_exif_orientation ? "true" : "false")
            << " text_cache_mb=" << absl::GetFlag(FLAGS_text_cache_mb)
            << " image_cache_mb=" << absl::GetFlag(FLAGS_image_cache_mb)
            << " max_request_memory_mb=" << absl::GetFlag(FLAGS_max_request_memory_mb)
            << " max_request_memory_per_client_mb="
            << absl::GetFlag(FLAGS_max_request_memory_per_client_mb)
            << " max_connection_age_s=" << absl::GetFlag(FLAGS_max_connection_age_s)
            << " max_connection_age_grace_s="
            << absl::GetFlag(FLAGS_max_connection_age_grace_s)
            << " max_connection_idle_s=" << absl::GetFlag(FLAGS_max_connection_idle_s)
            << " keepalive_time_s=" << absl::GetFlag(FLAGS_keepalive_time_s)
            << " keepalive_timeout_s=" << absl::GetFlag(FLAGS_keepalive_timeout_s)
            << " min_client_ping_interval_s="
            << absl::GetFlag(FLAGS_min_client_ping_interval_s)
            << " max_concurrent_streams=" << absl::GetFlag(FLAGS_max_concurrent_streams)
            << " reflection=" << (absl::GetFlag(FLAGS_reflection) ? "on" : "off")
            << security << " startup=" << RealClock::Get()->Now() - start;

  // Wait for a signal; once a second, mirror the engine's health into grpc.health.v1,
  // and give a burst's freed memory back once the calls have stopped.
  bool serving = true;
  absl::Time unhealthy_since;
  int signal = 0;
  constexpr absl::Duration kQuietBeforeTrim = absl::Seconds(10);
  IdleHeapTrimmer heap_trimmer(kQuietBeforeTrim);
  int64_t last_held = 0;
  int64_t memory_returns = 0;
  while (signal <= 0) {
    signal = signals.WaitForDrain(absl::Seconds(1));
    if (engine->healthy() != serving) {
      serving = !serving;
      server->SetServing(serving);
      LOG(WARNING) << "health is now " << (serving ? "SERVING" : "NOT_SERVING");
      unhealthy_since = RealClock::Get()->Now();
    }
    if (!serving && signal <= 0 &&
        RealClock::Get()->Now() - unhealthy_since >= exit_after_unhealthy) {
      // No drain: the stuck batch holds its worker, and the engine's shutdown would
      // wait for it. Calls in flight end with the connection.
      LOG(ERROR) << "health has been NOT_SERVING for "
                 << RealClock::Get()->Now() - unhealthy_since
                 << " (--exit_after_unhealthy_s): exiting with status " << kExitUnhealthy
                 << " for a restart";
      google::FlushLogFiles(google::GLOG_INFO);
      std::fflush(stderr);
      std::_Exit(kExitUnhealthy);
    }
    // A call counts as finished once it has answered, but gRPC holds its request and
    // response until the client has read them (request_memory_used() counts them), so
    // memory coming back counts as activity too: a quiet spell after it trims again.
    // Memory held by a client that never reads does not hold off trimming.
    const int64_t held = clip_service.request_memory_used();
    if (held < last_held) ++memory_returns;
    last_held = held;
    if (int64_t released = 0;
        heap_trimmer.Tick(RealClock::Get()->Now(),
                          metrics.requests_started() + memory_returns,
                          metrics.requests_in_flight(), &released) &&
        released >= (int64_t{64} << 20)) {
      LOG(INFO) << "no calls for " << kQuietBeforeTrim << ": gave " << (released >> 20)
                << " MiB of freed memory back to the system";
    }
  }
  const absl::Duration grace = absl::Seconds(grace_s);
  const absl::Time drain_start = RealClock::Get()->Now();
  LOG(INFO) << "received " << TerminationSignalName(signal) << ", draining for up to "
            << grace;
  clip_service.ShutdownBegins(grace);
  server->Shutdown(grace);
  engine->Shutdown();
  // Before the server and engine its readiness check reads are destroyed.
  if (metrics_http != nullptr) metrics_http->Stop();
  LOG(INFO) << "clip_server stopped after draining for "
            << RealClock::Get()->Now() - drain_start;
  return absl::OkStatus();
}

}  // namespace
}  // namespace clipserve

int main(int argc, char** argv) {
  // Abseil's --help lists only flags defined in a file named after the program
  // (clip_server.cc, clip_server_main.cc, ...); clip_server's are all in this one.
  // Abseil hands the filter the file's path without its leading '/'.
  absl::FlagsUsageConfig usage;
  usage.contains_helpshort_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/main.cc");
  };
  usage.contains_help_flags = usage.contains_helpshort_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "Serves CLIP embeddings over gRPC.\n"
      "Usage: clip_server [--model=demo:ViT-B-32|PATH] [--port=50051] [flags]");
  if (clipserve::AsksForHelp(argc, argv)) {
    clipserve::PrintHelp(std::cout);
    return EXIT_SUCCESS;
  }
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    // Abseil leaves here what no flag took: a boolean flag never takes the next word,
    // so "--resize_on_device false" sets it and leaves "false", and "clip_server
    // model.pt" would serve the demo model. Both are mistakes to report, not ignore.
    std::cerr << "clip_server: unexpected argument '" << positional[1]
              << "': give flags as --name=value (a boolean flag never takes the next "
                 "word), a checkpoint as --model=PATH; see --help"
              << std::endl;
    return EXIT_FAILURE;
  }
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  // A crash (SIGSEGV, SIGABRT, ...) writes its signal and stack trace to stderr before
  // the process dies, instead of vanishing with only an exit code.
  google::InstallFailureSignalHandler();
  clipserve::ForwardGrpcLogsToGlog();
  clipserve::ForwardProtobufLogsToGlog();
  absl::Status status = clipserve::SetLogFormat(absl::GetFlag(FLAGS_log_format));
  if (status.ok()) status = clipserve::MaybeRestartForBetterBlas(argv);
  if (status.ok()) status = clipserve::Run();
  if (!status.ok()) {
    LOG(ERROR) << "clip_server failed: " << status;
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
