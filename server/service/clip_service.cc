#include "server/service/clip_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "glog/logging.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/support/error_details.h"
#include "server/common/request_id.h"
#include "server/metrics/metrics.h"
#include "server/model/contrastive_loss.h"
#include "server/service/grpc_status.h"
#include "server/service/peer_address.h"
#include "server/service/request_memory_budget.h"
#include "server/service/request_parsing.h"

namespace clipserve {
namespace {

using google::protobuf::RepeatedPtrField;

// What an element of `bytes` bytes takes in a message field numbered below 16 (a
// submessage, a string, a packed list): its tag, its length and itself.
size_t FieldBytes(size_t bytes) {
  return 1 + google::protobuf::io::CodedOutputStream::VarintSize64(bytes) + bytes;
}

// A packed list of `count` floats as a field (nothing when empty).
size_t PackedFloatsBytes(size_t count) { return count == 0 ? 0 : FieldBytes(4 * count); }

// `count` Embedding messages of `dim` floats in a repeated field.
size_t EmbeddingsBytes(size_t count, int dim) {
  return count * FieldBytes(PackedFloatsBytes(static_cast<size_t>(dim)));
}

// A Matrix message of `rows` x `cols` floats as a field.
size_t MatrixBytes(size_t rows, size_t cols) {
  const auto varint_field = [](size_t value) {
    return value == 0 ? 0
                      : 1 + google::protobuf::io::CodedOutputStream::VarintSize64(value);
  };
  return FieldBytes(varint_field(rows) + varint_field(cols) +
                    PackedFloatsBytes(rows * cols));
}

// At most the bytes a TokenizeResponse for `texts` takes: each text gives at most
// `context_length` ids and at most 2 more than its bytes (start and end, and no token
// is shorter than a byte), each id up to 3 bytes (ids are below 2^21), plus its
// truncated flag.
size_t TokenizedTextsBytes(const std::vector<std::string>& texts, int context_length) {
  size_t total = 0;
  for (const std::string& text : texts) {
    const size_t ids = std::min(text.size() + 2, static_cast<size_t>(context_length));
    total += FieldBytes(FieldBytes(3 * ids) + 2);
  }
  return total;
}

// The call's request id (see request_id.h): the client's first x-request-id when it is
// valid, else a new one (an invalid id is replaced, not refused). Sent back in the
// trailing metadata either way, so the client learns the id the log uses. Not in the
// initial metadata: a custom header there would stop gRPC from answering errors
// Trailers-Only, and clients' and proxies' gRPC retries (gRFC A6, Envoy) treat a
// response whose headers arrived as committed, never retrying it.
std::string AssignRequestId(grpc::CallbackServerContext* context) {
  std::string id;
  const auto [first, last] = context->client_metadata().equal_range(kRequestIdKey);
  if (first != last) {
    const absl::string_view sent(first->second.data(), first->second.size());
    if (IsValidRequestId(sent)) id = std::string(sent);
  }
  if (id.empty()) id = NewRequestId();
  context->AddTrailingMetadata(kRequestIdKey, id);
  return id;
}

// A call's deadline, and how close to it a cancel counts as the deadline's.
//
// gRPC cancels a call when its deadline passes, but the first cancel is often the
// client's: its deadline timer started before the server's, which counts from the
// request's arrival, so the client's cancel can arrive a transit time before the
// server's deadline. The engine may also find the cancellation flag set before it
// looks at the deadline. A call that ends CANCELLED that close to its deadline is
// recorded as its client saw it end: DEADLINE_EXCEEDED. The slack is a tenth of the
// time the call had when it arrived, at least 1 ms (the clocks' conversions) and at
// most 100 ms, so a client that cancels itself early is still counted CANCELLED.
class CallDeadline {
 public:
  explicit CallDeadline(const grpc::CallbackServerContext& context)
      : at_(DeadlineOf(context)),
        slack_(std::clamp((at_ - absl::Now()) / 10, absl::Milliseconds(1),
                          absl::Milliseconds(100))) {}

  absl::Time at() const { return at_; }

  // `status`, or DEADLINE_EXCEEDED where it is CANCELLED within the slack of the
  // deadline or past it.
  absl::Status Label(absl::Status status) const {
    if (status.code() != absl::StatusCode::kCancelled || absl::Now() + slack_ < at_) {
      return status;
    }
    return absl::DeadlineExceededError(
        absl::StrCat("deadline exceeded (", status.message(), ")"));
  }

 private:
  // The client's deadline as an absl::Time; gRPC reports "none" as time_point::max().
  static absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
    const std::chrono::system_clock::time_point deadline = context.deadline();
    if (deadline == std::chrono::system_clock::time_point::max()) {
      return absl::InfiniteFuture();
    }
    return absl::FromChrono(deadline);
  }

  const absl::Time at_;
  const absl::Duration slack_;
};

bool OptionalTrue(bool has, bool value) { return !has || value; }

// An engine answer that is not what was asked for is the engine's bug, not the
// client's: INTERNAL.
absl::Status CheckShape(const EmbedResult& result, int rows, int dim, bool texts) {
  if (result.dim != dim || result.values.size() != static_cast<size_t>(rows) * dim) {
    return absl::InternalError(absl::StrCat("engine returned ", result.values.size(),
                                            " values of width ", result.dim, " for ",
                                            rows, " inputs of width ", dim));
  }
  if (texts && (result.truncated.size() != static_cast<size_t>(rows) ||
                result.num_tokens.size() != static_cast<size_t>(rows))) {
    return absl::InternalError(absl::StrCat(
        "engine returned token counts for ", result.num_tokens.size(),
        " and truncation flags for ", result.truncated.size(), " of ", rows, " texts"));
  }
  return absl::OkStatus();
}

void AddEmbeddings(const EmbedResult& result, RepeatedPtrField<v1::Embedding>* out) {
  out->Reserve(out->size() + result.rows());
  for (int i = 0; i < result.rows(); ++i) {
    out->Add()->mutable_values()->Add(result.row(i), result.row(i) + result.dim);
  }
}

void FillMatrix(int rows, int cols, const std::vector<float>& values, v1::Matrix* out) {
  out->set_rows(rows);
  out->set_cols(cols);
  out->mutable_values()->Add(values.begin(), values.end());
}

// The index k when `field` is exactly "<list>[k]".
std::optional<int> ItemIndex(absl::string_view field, absl::string_view list) {
  if (!absl::ConsumePrefix(&field, list) || !absl::ConsumePrefix(&field, "[") ||
      !absl::ConsumeSuffix(&field, "]")) {
    return std::nullopt;
  }
  int index = 0;
  if (!absl::SimpleAtoi(field, &index) || index < 0) return std::nullopt;
  return index;
}

// The engine names a failed item "<field>[i]" after the list it was given. Where that
// list is not the request's (Classify's prompts, EmbedStream's single item), this
// renames "<engine_list>[i]" to rename(i) in the BadRequest detail and at the start
// of the message (INTERNAL errors name their item there too, without a detail); every
// other status passes unchanged.
absl::Status RenameEngineItems(const absl::Status& status, absl::string_view engine_list,
                               absl::FunctionRef<std::string(int)> rename) {
  if (status.ok()) return status;
  const auto payload = status.GetPayload(kBadRequestTypeUrl);
  google::rpc::BadRequest bad_request;
  if (!payload.has_value() || !bad_request.ParseFromString(std::string(*payload))) {
    const absl::string_view message = status.message();
    const size_t end = message.find("]: ");
    const std::optional<int> index =
        end == absl::string_view::npos
            ? std::nullopt
            : ItemIndex(message.substr(0, end + 1), engine_list);
    if (!index.has_value()) return status;
    absl::Status out(status.code(),
                     absl::StrCat(rename(*index), message.substr(end + 1)));
    status.ForEachPayload([&out](absl::string_view url, const absl::Cord& bytes) {
      out.SetPayload(url, bytes);
    });
    return out;
  }
  std::string message(status.message());
  for (google::rpc::BadRequest::FieldViolation& violation :
       *bad_request.mutable_field_violations()) {
    const std::optional<int> index = ItemIndex(violation.field(), engine_list);
    if (!index.has_value()) continue;
    std::string renamed = rename(*index);
    if (absl::StartsWith(message, violation.field())) {
      message = absl::StrCat(renamed, message.substr(violation.field().size()));
    }
    violation.set_field(std::move(renamed));
  }
  absl::Status out(status.code(), message);
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& bytes) {
    out.SetPayload(url, bytes);
  });
  out.SetPayload(kBadRequestTypeUrl, absl::Cord(bad_request.SerializeAsString()));
  return out;
}

// The google.rpc.Status a client would read from a failed call with `status`, built
// through ToGrpcStatus() so that both paths carry the same details.
google::rpc::Status ToRpcStatus(const absl::Status& status) {
  const grpc::Status grpc_status = ToGrpcStatus(status);
  google::rpc::Status rpc_status;
  if (!grpc::ExtractErrorDetails(grpc_status, &rpc_status).ok()) {
    rpc_status.Clear();
    rpc_status.set_code(static_cast<int32_t>(status.code()));
    rpc_status.set_message(std::string(status.message()));
  }
  return rpc_status;
}

// In a SimilarityRequest the texts are at "texts.texts.texts[i]" (TextSet, TextList);
// errors call them "texts[i]", like every other Similarity error.
std::string SimilarityFieldName(absl::string_view path) {
  absl::string_view item = path;
  if (absl::ConsumePrefix(&item, "texts.texts.")) return std::string(item);
  return std::string(path);
}

// The name a call's client has in `budget`: its host address when the budget limits
// each client, else "" (and no work).
std::string BudgetClientOf(const RequestMemoryBudget& budget,
                           const grpc::CallbackServerContext& context) {
  if (budget.per_client_capacity() == 0) return std::string();
  return PeerHost(context.peer());
}

// ---------------------------------------------------------------------------
// Unary calls

// What a call that brought no request message and was not cancelled is answered.
absl::Status NoRequestError() {
  return absl::InvalidArgumentError("the call carried no request message");
}

// One unary call: the reactor gRPC drives, and the owner of the call's cancellation
// flag. Created by the handler, finished exactly once (from the handler on a
// validation error, else from an engine callback), deleted by gRPC's OnDone(), which
// comes only after Finish() and after the handler returned, so the request and
// response stay valid until then. OnCancel() may come at any time before OnDone(),
// also after the engine was called or after Finish(): it sets the flag, which the
// engine reads, and asks the engine to drop the dead items queued now; the engine
// still answers (with CANCELLED), which finishes the call, possibly inside OnCancel().
class UnaryCall : public grpc::ServerUnaryReactor {
 public:
  // What each call takes from its service.
  struct Env {
    const RpcRecorder* recorder;
    Engine* engine;
    int64_t max_response_bytes;  // the largest response gRPC sends (0: no limit)
  };

  UnaryCall(grpc::CallbackServerContext& context, const Env& env, absl::string_view rpc)
      : deadline_(context),
        engine_(env.engine),
        max_response_bytes_(env.max_response_bytes),
        recorder_(env.recorder),
        record_(env.recorder->Start(rpc, context.peer(), RpcRecorder::Kind::kUnary,
                                    AssignRequestId(&context))) {
    constructed_.store(true, std::memory_order_release);
  }

  EmbedOptions MakeEmbedOptions(bool normalize, bool truncate) const {
    EmbedOptions options;
    options.normalize = normalize;
    options.truncate = truncate;
    options.deadline = deadline_.at();
    options.cancellation = cancellation_;
    return options;
  }

  // The response, which FinishWith(OK) first checks against max_response_bytes
  // (RESOURCE_EXHAUSTED when larger), then for a method with raw bytes serializes into
  // `out` (owned by gRPC; nullptr where gRPC serializes a typed response itself).
  void SetResponse(const google::protobuf::Message* response, grpc::ByteBuffer* out) {
    checked_response_ = response;
    raw_out_ = out;
  }

  // Ends the call. `this` may be deleted on another thread as soon as this returns.
  void FinishWith(absl::Status status) {
    if (finished_.exchange(true, std::memory_order_acq_rel)) {
      LOG(DFATAL) << "ClipService call finished twice; second status: " << status;
      return;
    }
    if (status.ok() && checked_response_ != nullptr) {
      status = CheckResponseSize(*checked_response_, max_response_bytes_);
      if (status.ok() && raw_out_ != nullptr) {
        status = SerializeResponse(*checked_response_, raw_out_);
      }
    }
    // A call gRPC cancelled (the client, its deadline, the server's shutdown) is over
    // for its client, whatever the engine answered: a batch that was already running
    // still answers OK, which the client never sees.
    if (grpc_cancelled_.load(std::memory_order_acquire)) {
      status = absl::CancelledError("call cancelled");
    }
    status = deadline_.Label(std::move(status));
    recorder_->End(record_, status);
    const grpc::Status grpc_status = ToGrpcStatus(status);
    // gRPC runs OnDone() only after Finish(), but it orders the two inside its core
    // library, where ThreadSanitizer cannot see it. This store and OnDone()'s load
    // make that order explicit: every write to the call, by any engine callback,
    // happens before the call is deleted.
    finished_.store(true, std::memory_order_release);
    Finish(grpc_status);
  }

  // Ends a call that brought no request message, which gRPC hands a raw-bytes handler
  // too: one cancelled (by its client or its deadline) during its upload, or one whose
  // client closed it without sending a message. Only the latter is the client's
  // mistake, and only OnCancel(), which gRPC runs before OnDone() for a call cancelled
  // before it was finished, tells them apart: the call is recorded in OnDone().
  void FinishWithoutRequest() {
    if (finished_.exchange(true, std::memory_order_acq_rel)) {
      LOG(DFATAL) << "ClipService call finished twice";
      return;
    }
    record_when_done_ = true;
    finished_.store(true, std::memory_order_release);  // see FinishWith()
    Finish(ToGrpcStatus(NoRequestError()));
  }

  // Before any model work, for a response sure to take at least `least` bytes (`what`
  // says of what): RESOURCE_EXHAUSTED when that is over the largest message the
  // server sends, which FinishWith() would only find after the work; else
  // ReserveResponse(least).
  absl::Status AdmitResponse(size_t least, absl::string_view what) {
    if (max_response_bytes_ > 0 && least > static_cast<size_t>(max_response_bytes_)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the response would be at least ", least, " bytes (", what,
                       "), over the largest message this server sends (",
                       max_response_bytes_, " bytes): ask for fewer items per call"));
    }
    return ReserveResponse(least);
  }

  // Reserves `bytes` for the response beside the request in the budget Hold() was
  // given (the budget's RESOURCE_EXHAUSTED when they do not fit), until OnDone(): gRPC
  // holds a response until its client has read it, and a client that reads none
  // (an HTTP/2 window of 0) would otherwise hold response after response, each up to
  // the largest message, for a few bytes of request. Once per call, before the work.
  absl::Status ReserveResponse(size_t bytes) {
    if (budget_ == nullptr) return absl::OkStatus();
    absl::StatusOr<RequestMemoryBudget::Reservation> reserved =
        budget_->ReserveBeside(reservation_,
                               static_cast<int64_t>(std::min<size_t>(
                                   bytes, std::numeric_limits<int64_t>::max())),
                               budget_client_);
    if (!reserved.ok()) return reserved.status();
    response_reservation_ = *std::move(reserved);
    return absl::OkStatus();
  }

  // Keeps `reservation`, made in `budget` for `client`, until the call is deleted in
  // OnDone(); gRPC frees the request and response just after that.
  void Hold(RequestMemoryBudget* budget, std::string client,
            RequestMemoryBudget::Reservation reservation) {
    budget_ = budget;
    budget_client_ = std::move(client);
    reservation_ = std::move(reservation);
  }

  // gRPC holds the call until this returns, even when the engine finishes it inside.
  void OnCancel() override {
    (void)constructed_.load(std::memory_order_acquire);  // see constructed_
    recorder_->Cancelled(record_);
    grpc_cancelled_.store(true, std::memory_order_release);
    cancellation_->Cancel();
    // Its queued items (and any other cancelled call's) free their memory and budget
    // now, not when a batch reaches them.
    engine_->DropDeadItems();
  }
  void OnDone() override {
    if (!finished_.load(std::memory_order_acquire)) {
      LOG(DFATAL) << "ClipService call done before it was finished";
    }
    if (record_when_done_) {
      recorder_->End(record_, grpc_cancelled_.load(std::memory_order_acquire)
                                  ? deadline_.Label(absl::CancelledError(
                                        "the call ended before its request arrived"))
                                  : NoRequestError());
    }
    delete this;
  }

 protected:
  // Marks this call's queued work dead; the engine drops it when it next looks, or at
  // once through engine()->DropDeadItems().
  void CancelEngineWork() { cancellation_->Cancel(); }
  Engine* engine() const { return engine_; }
  int64_t max_response_bytes() const { return max_response_bytes_; }

 private:
  const CallDeadline deadline_;
  Engine* const engine_;
  const int64_t max_response_bytes_;
  const RpcRecorder* const recorder_;
  RpcRecorder::Call record_;
  const std::shared_ptr<CancellationFlag> cancellation_ =
      std::make_shared<CancellationFlag>();
  std::atomic<bool> finished_{false};
  // Set by FinishWithoutRequest(), before finished_.
  bool record_when_done_ = false;
  // Set by OnCancel() (the cancellation flag is also set by CancelEngineWork()).
  std::atomic<bool> grpc_cancelled_{false};
  // Set at the end of the constructor, read first by OnCancel(), which gRPC may run on
  // another thread: gRPC's own ordering is inside its core library, where
  // ThreadSanitizer cannot see it.
  std::atomic<bool> constructed_{false};
  const google::protobuf::Message* checked_response_ = nullptr;
  grpc::ByteBuffer* raw_out_ = nullptr;
  RequestMemoryBudget* budget_ = nullptr;
  std::string budget_client_;
  RequestMemoryBudget::Reservation reservation_;
  RequestMemoryBudget::Reservation response_reservation_;
};

// Reserves a call's request bytes in `budget` and hands them to the call; false after
// finishing the call with the budget's RESOURCE_EXHAUSTED when they do not fit.
bool Admit(RequestMemoryBudget* budget, size_t request_bytes,
           const grpc::CallbackServerContext& context, UnaryCall* call) {
  std::string client = BudgetClientOf(*budget, context);
  absl::StatusOr<RequestMemoryBudget::Reservation> reservation =
      budget->Reserve(static_cast<int64_t>(request_bytes), client);
  if (!reservation.ok()) {
    call->FinishWith(reservation.status());
    return false;
  }
  call->Hold(budget, std::move(client), *std::move(reservation));
  return true;
}

// Admit(), then parses `bytes` into `*request` (ParseRequest(), `max_items` and
// `field_name` as there); false after finishing the call with the refusal or the
// parse error.
bool AdmitAndParse(RequestMemoryBudget* budget, const grpc::ByteBuffer& bytes,
                   const grpc::CallbackServerContext& context, UnaryCall* call,
                   google::protobuf::Message* request, int max_items,
                   absl::FunctionRef<std::string(absl::string_view)> field_name) {
  if (!bytes.Valid()) {
    call->FinishWithoutRequest();
    return false;
  }
  if (!Admit(budget, bytes.Length(), context, call)) return false;
  if (absl::Status parsed = ParseRequest(bytes, request, max_items, field_name);
      !parsed.ok()) {
    call->FinishWith(parsed);
    return false;
  }
  return true;
}

// A unary call of a method with raw bytes (see request_parsing.h), owning its request
// and response messages.
template <typename Request, typename Response>
class RawUnaryCall final : public UnaryCall {
 public:
  RawUnaryCall(grpc::CallbackServerContext& context, const Env& env,
               absl::string_view rpc, grpc::ByteBuffer* out)
      : UnaryCall(context, env, rpc) {
    SetResponse(&response, out);
  }

  Request request;
  Response response;
};

// A unary call that waits for several engine requests running concurrently. Each
// engine callback stores its result in its own member and then calls Answer(); the
// last answer finishes the call with the first error, or with Compute(). The first
// error also cancels the other requests' queued work and has the engine answer it at
// once, so the call fails without waiting for their batches.
class JoinedCall : public UnaryCall {
 public:
  using UnaryCall::UnaryCall;

  // Sets how many answers to wait for; call before starting any engine request. With
  // zero, finishes the call at once.
  void Expect(int answers) {
    {
      absl::MutexLock lock(&mu_);
      pending_ = answers;
    }
    if (answers == 0) FinishWith(Compute());
  }

  // One engine request is done with `status`; its result is stored.
  void Answer(absl::Status status) {
    bool last = false;
    Engine* drop_dead_in = nullptr;
    absl::Status error;
    {
      absl::MutexLock lock(&mu_);
      if (!status.ok() && error_.ok()) {
        error_ = std::move(status);
        // Under the lock: once pending_ drops, another answer may finish the call,
        // which then deletes this object. Only the last answer may touch it after.
        CancelEngineWork();
        drop_dead_in = engine();
      }
      last = --pending_ == 0;
      error = error_;
    }
    // The mutex orders every callback's stores before this read of them.
    if (last) {
      FinishWith(error.ok() ? Compute() : error);
    } else if (drop_dead_in != nullptr) {
      // Not the last answer: `this` may be gone by now, and the answers this brings
      // (CANCELLED) may finish the call.
      drop_dead_in->DropDeadItems();
    }
  }

 protected:
  // Builds the response from the stored results; returns the call's status.
  virtual absl::Status Compute() = 0;

 private:
  absl::Mutex mu_;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

class SimilarityCall final : public JoinedCall {
 public:
  SimilarityCall(grpc::CallbackServerContext& context, const Env& env,
                 grpc::ByteBuffer* out, int dim)
      : JoinedCall(context, env, "Similarity"), dim_(dim) {
    SetResponse(&response_, out);
  }

  v1::SimilarityRequest request;
  // Set by the handler before Expect().
  float scale = 0;
  bool paired = false;
  int num_images = 0;
  int num_texts = 0;
  // Normalized embeddings, row-major: filled by the handler for precomputed
  // embeddings, else by that side's engine callback.
  std::vector<float> image_rows;
  std::vector<float> text_rows;

  void OnEmbedded(absl::StatusOr<EmbedResult> result, bool texts) {
    absl::Status status = result.status();
    if (status.ok()) {
      status = CheckShape(*result, texts ? num_texts : num_images, dim_, texts);
    }
    if (status.ok()) (texts ? text_rows : image_rows) = std::move(result->values);
    Answer(std::move(status));
  }

 private:
  absl::Status Compute() override {
    absl::StatusOr<std::vector<float>> logits =
        ScaledLogits(image_rows, text_rows, dim_, scale);
    if (!logits.ok()) return absl::InternalError(logits.status().message());
    FillMatrix(num_images, num_texts, *logits, response_.mutable_logits_per_image());
    FillMatrix(num_texts, num_images, Transpose(*logits, num_images, num_texts),
               response_.mutable_logits_per_text());
    FillMatrix(num_images, num_texts, RowSoftmax(*logits, num_images, num_texts),
               response_.mutable_probs());
    response_.set_logit_scale(scale);
    if (paired) {
      absl::StatusOr<ContrastiveLoss> loss = ComputeContrastiveLoss(*logits, num_images);
      if (!loss.ok()) return absl::InternalError(loss.status().message());
      v1::ContrastiveLoss* out = response_.mutable_loss();
      out->set_image_to_text(static_cast<float>(loss->image_to_text));
      out->set_text_to_image(static_cast<float>(loss->text_to_image));
      out->set_mean(static_cast<float>(loss->mean));
    }
    return absl::OkStatus();
  }

  v1::SimilarityResponse response_;
  const int dim_;
};

class ClassifyCall final : public JoinedCall {
 public:
  ClassifyCall(grpc::CallbackServerContext& context, const Env& env,
               grpc::ByteBuffer* out, int dim, LabelEmbeddingCache* cache)
      : JoinedCall(context, env, "Classify"), dim_(dim), cache_(cache) {
    SetResponse(&response_, out);
  }

  v1::ClassifyRequest request;
  // Set by the handler before Expect().
  float scale = 0;
  int top_k = 0;
  int num_templates = 0;
  std::string templates_key;
  // Normalized image embeddings, from the engine.
  std::vector<float> image_rows;
  // Normalized label embeddings, row-major in request order: cached ones filled by
  // the handler, the others by OnPromptsEmbedded().
  std::vector<float> label_rows;
  // Labels the cache did not have, in request order.
  std::vector<int> missing_labels;

  void OnImagesEmbedded(absl::StatusOr<EmbedResult> result) {
    absl::Status status = result.status();
    if (status.ok()) status = CheckShape(*result, request.images_size(), dim_, false);
    if (status.ok()) image_rows = std::move(result->values);
    Answer(std::move(status));
  }

  // `result` holds the prompts of missing_labels, label-major: prompt k is template
  // k % num_templates applied to label missing_labels[k / num_templates].
  void OnPromptsEmbedded(absl::StatusOr<EmbedResult> result) {
    absl::Status status = result.status();
    if (!status.ok()) {
      status = RenameEngineItems(status, kPromptsField, [this](int k) {
        const size_t j = static_cast<size_t>(k / num_templates);
        return j < missing_labels.size() ? absl::StrCat("labels[", missing_labels[j], "]")
                                         : absl::StrCat(kPromptsField, "[", k, "]");
      });
    } else {
      status = CheckShape(
          *result, static_cast<int>(missing_labels.size()) * num_templates, dim_, true);
    }
    if (status.ok()) status = StoreLabelEmbeddings(*result);
    Answer(std::move(status));
  }

  static constexpr absl::string_view kPromptsField = "label_prompts";

  // Before any model work: RESOURCE_EXHAUSTED when even the smallest response this
  // request could get (each image's top_k shortest labels, their scores zero) is over
  // the largest message the server sends, since Classify's responses grow with the
  // labels' text, images x top_k copies of it, which a small request can make large;
  // else ReserveResponse() for the largest it could get (the top_k longest labels).
  absl::Status AdmitResults() {
    std::vector<size_t> score_bytes;
    score_bytes.reserve(static_cast<size_t>(request.labels_size()));
    v1::LabelScore score;
    for (int label = 0; label < request.labels_size(); ++label) {
      score.set_label(request.labels(label));
      score.set_index(label);
      score_bytes.push_back(FieldBytes(score.ByteSizeLong()));
    }
    std::sort(score_bytes.begin(), score_bytes.end());
    const size_t shortest =
        std::accumulate(score_bytes.begin(), score_bytes.begin() + top_k, size_t{0});
    const size_t least =
        static_cast<size_t>(request.images_size()) * FieldBytes(shortest);
    const int64_t limit = max_response_bytes();
    if (limit > 0 && least > static_cast<size_t>(limit)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the response would be at least ", least, " bytes (",
                       request.images_size(), " images x top_k ", top_k,
                       " labels), over the largest message this server sends (", limit,
                       " bytes): ask for fewer images, shorter labels or a smaller top_k "
                       "per call"));
    }
    // Scores as their largest (a probability and a logit each, 5 bytes).
    const size_t longest =
        std::accumulate(score_bytes.end() - top_k, score_bytes.end(), size_t{0}) +
        10 * static_cast<size_t>(top_k);
    const size_t most = static_cast<size_t>(request.images_size()) * FieldBytes(longest);
    return ReserveResponse(limit > 0 ? std::min(most, static_cast<size_t>(limit)) : most);
  }

 private:
  // Averages each missing label's prompt rows, normalizes, stores and caches them.
  absl::Status StoreLabelEmbeddings(const EmbedResult& prompts) {
    for (size_t j = 0; j < missing_labels.size(); ++j) {
      std::vector<double> sum(dim_, 0.0);
      for (int t = 0; t < num_templates; ++t) {
        const float* row = prompts.row(static_cast<int>(j) * num_templates + t);
        for (int d = 0; d < dim_; ++d) sum[d] += row[d];
      }
      auto embedding = std::make_shared<std::vector<float>>(sum.begin(), sum.end());
      if (!L2NormalizeInPlace(absl::MakeSpan(*embedding))) {
        return absl::InternalError(absl::StrCat("the prompt embeddings of labels[",
                                                missing_labels[j], "] sum to zero"));
      }
      const int label = missing_labels[j];
      std::copy(embedding->begin(), embedding->end(),
                label_rows.begin() + static_cast<size_t>(label) * dim_);
      cache_->Insert(LabelEmbeddingCache::Key(templates_key, request.labels(label)),
                     std::move(embedding));
    }
    return absl::OkStatus();
  }

  absl::Status Compute() override {
    const int num_images = request.images_size();
    const int num_labels = request.labels_size();
    absl::StatusOr<std::vector<float>> logits =
        ScaledLogits(image_rows, label_rows, dim_, scale);
    if (!logits.ok()) return absl::InternalError(logits.status().message());
    const std::vector<float> probs = RowSoftmax(*logits, num_images, num_labels);
    // Built one image at a time and measured before it joins the response: one over
    // the limit is refused with its exact size, never held whole.
    const int64_t limit = max_response_bytes();
    size_t size = 0;
    v1::Classification result;
    std::vector<int> order(num_labels);
    for (int i = 0; i < num_images; ++i) {
      const float* row_logits = logits->data() + static_cast<size_t>(i) * num_labels;
      const float* row_probs = probs.data() + static_cast<size_t>(i) * num_labels;
      std::iota(order.begin(), order.end(), 0);
      // Softmax is monotonic, so ranking by logit ranks by probability, without ties
      // from probabilities that underflow to zero; equal logits keep label order.
      std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                        [row_logits](int a, int b) {
                          return row_logits[a] > row_logits[b] ||
                                 (row_logits[a] == row_logits[b] && a < b);
                        });
      result.Clear();
      for (int r = 0; r < top_k; ++r) {
        const int label = order[r];
        v1::LabelScore* score = result.add_labels();
        score->set_label(request.labels(label));
        score->set_index(label);
        score->set_probability(row_probs[label]);
        score->set_logit(row_logits[label]);
      }
      size += FieldBytes(result.ByteSizeLong());
      if (limit <= 0 || size <= static_cast<size_t>(limit)) {
        response_.add_results()->Swap(&result);
      }
    }
    if (limit > 0 && size > static_cast<size_t>(limit)) {
      response_.Clear();
      return ResponseTooLargeError(size, limit);
    }
    return absl::OkStatus();
  }

  v1::ClassifyResponse response_;
  const int dim_;
  LabelEmbeddingCache* const cache_;
};

// ---------------------------------------------------------------------------
// EmbedStream

// One EmbedStream call, with raw bytes (request_parsing.h) so that an item that does
// not parse fails alone. Reads one item at a time, starts its engine request (or
// answers a bad item with its error at once), and writes answers one at a time from a
// queue in completion order. Items count as in flight from their read until their
// answer is written; at max_in_flight no further read is issued, which is the flow
// control. Each item reserves its bytes and its answer's in the request memory budget
// until the answer is written (a client that reads no answers holds the budget, not
// memory outside it). An item that does not fit the budget while the stream's own
// earlier items hold some of it waits for them (parked: the stream reads no further
// until the answer of one of them is written, then it tries again), so that one client's
// stream of large items is slowed down rather than refused item by item; with none of its
// own held, or when parked items already hold as much again as the budget (the service's
// parking budget, which bounds what waiting streams keep), the item fails alone
// (RESOURCE_EXHAUSTED, with a RetryInfo). After the
// client's half-close and the last answer, finishes OK.
//
// Cancellation (or a failed write) marks the stream broken: queued answers are
// dropped, no further reads are issued, the engine is told to drop queued work, and
// the call finishes CANCELLED once the outstanding read, write and engine requests
// have all come back, because their callbacks point at this object, which OnDone()
// deletes.
//
// A client's cancel also ends the outstanding read, just as its half-close does, and
// gRPC may report the read before OnCancel(): with nothing in flight the stream then
// finishes OK, and OnCancel() comes after. So a stream is recorded (RpcRecorder) in
// OnDone(), which comes after OnCancel() if there is one: CANCELLED when there was.
//
// Every decision is taken under mu_; the gRPC operations it calls for run after mu_
// is released (Run()), and nothing touches `this` after Finish().
class EmbedStreamCall final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  EmbedStreamCall(grpc::CallbackServerContext& context, Engine* engine,
                  const ClipServiceOptions& options, const RpcRecorder* recorder,
                  RequestMemoryBudget* request_memory, RequestMemoryBudget* parking)
      : engine_(engine),
        request_memory_(request_memory),
        parking_(parking),
        budget_client_(BudgetClientOf(*request_memory, context)),
        limits_(options.limits),
        max_in_flight_(options.max_stream_items_in_flight),
        deadline_(context),
        recorder_(recorder),
        record_(recorder->Start("EmbedStream", context.peer(), RpcRecorder::Kind::kStream,
                                AssignRequestId(&context))) {
    constructed_.store(true, std::memory_order_release);
    StartRead(&read_);  // reading_ starts true
  }

  void OnReadDone(bool ok) override {
    SeeConstruction();
    if (!ok) {  // half-close, or the call is over
      Actions actions;
      {
        absl::MutexLock lock(&mu_);
        reading_ = false;
        half_closed_ = true;
        actions = NextActionsLocked();
      }
      Run(actions);
      return;
    }
    grpc::ByteBuffer item;
    item.Swap(&read_);
    bool broken;
    {
      absl::MutexLock lock(&mu_);
      broken = broken_;
      if (!broken) ++in_flight_;
    }
    // reading_ is still true: it keeps the call from finishing while the item starts.
    if (!broken) StartItem(item);
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      actions = NextActionsLocked();
    }
    Run(actions);
  }

  void OnWriteDone(bool ok) override {
    SeeConstruction();
    if (!ok) cancellation_->Cancel();
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      --in_flight_;
      if (write_held_.has_value()) {
        write_held_.reset();
        ReleasedLocked();
      }
      if (!ok) broken_ = true;
      actions = NextActionsLocked();
    }
    Run(actions);
  }

  void OnCancel() override {
    SeeConstruction();
    recorder_->Cancelled(record_);
    cancellation_->Cancel();
    // Copied: nothing touches `this` after Run() may have finished the call.
    Engine* const engine = engine_;
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      broken_ = true;
      cancelled_ = true;
      actions = NextActionsLocked();
    }
    Run(actions);
    // The stream's queued items free their memory now; their answers (CANCELLED)
    // come back through the engine callbacks, which take mu_ and may finish the call.
    engine->DropDeadItems();
  }

  // Pairs with Run()'s store before Finish(), as in UnaryCall::OnDone().
  void OnDone() override {
    if (!finish_started_.load(std::memory_order_acquire)) {
      LOG(DFATAL) << "EmbedStream call done before it was finished";
    }
    absl::Status status;
    std::vector<std::pair<std::string, absl::Status>> past_deadline;
    {
      absl::MutexLock lock(&mu_);
      status = cancelled_ ? absl::CancelledError("stream cancelled") : finish_status_;
      past_deadline.swap(past_deadline_items_);
    }
    status = deadline_.Label(std::move(status));
    // Answered in a stream that went on to finish OK (the engine's deadline check can
    // beat gRPC's own timer): failed items after all.
    if (status.ok()) {
      for (const auto& [id, failed] : past_deadline) {
        recorder_->ItemFailed(record_, id, failed);
      }
    }
    recorder_->End(record_, status);
    delete this;
  }

 private:
  // gRPC operations decided under mu_, started after it is released.
  struct Actions {
    bool write = false;
    bool read = false;
    bool finish = false;
    grpc::Status status;
    // A parked item to start again.
    std::optional<grpc::ByteBuffer> retry;
  };

  Actions NextActionsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Actions actions;
    if (finished_) return actions;
    if (broken_) {
      queue_.clear();
      parked_.reset();
      parked_room_.Release();
      if (!reading_ && !writing_ && engine_pending_ == 0) {
        finished_ = true;
        finish_status_ = absl::CancelledError("stream cancelled");
        actions.finish = true;
        actions.status = ToGrpcStatus(finish_status_);
      }
      return actions;
    }
    if (!writing_ && !queue_.empty()) {
      writing_ = true;
      write_.Swap(&queue_.front().bytes);
      write_held_ = std::move(queue_.front().held);
      queue_.pop_front();
      actions.write = true;
    }
    // Some of the stream's memory came back (or none is held): the parked item tries
    // again. reading_ keeps the call from finishing while it starts, as in OnReadDone().
    if (parked_.has_value() && !reading_ && (released_since_park_ || held_items_ == 0)) {
      actions.retry = std::move(parked_);
      parked_.reset();
      parked_room_.Release();
      reading_ = true;
    }
    if (!reading_ && !half_closed_ && !parked_.has_value() &&
        in_flight_ < max_in_flight_) {
      reading_ = true;
      actions.read = true;
    }
    // No item in flight means nothing queued, being written, or in the engine.
    if (half_closed_ && !reading_ && in_flight_ == 0) {
      finished_ = true;  // finish_status_ stays OK
      actions.finish = true;
      actions.status = grpc::Status::OK;
    }
    return actions;
  }

  // See constructed_.
  void SeeConstruction() const { (void)constructed_.load(std::memory_order_acquire); }

  void Run(const Actions& actions) {
    if (actions.write) StartWrite(&write_);
    if (actions.read) StartRead(&read_);
    if (actions.finish) {
      // The finish was decided under mu_ after every other callback's last change,
      // so this store publishes all of them to OnDone() (see UnaryCall::FinishWith).
      finish_started_.store(true, std::memory_order_release);
      Finish(actions.status);
    }
    if (actions.retry.has_value()) {  // never with finish: reading_ was set for it
      StartItem(*actions.retry);
      Actions next;
      {
        absl::MutexLock lock(&mu_);
        reading_ = false;
        next = NextActionsLocked();
      }
      Run(next);
    }
  }

  // How many reservations of the stream's items have come back so far.
  int64_t ReleasesSoFar() {
    absl::MutexLock lock(&mu_);
    return releases_;
  }

  // Parks the item `bytes`, which the request memory budget refused after
  // `releases_seen` releases, when the stream's own items hold some of it and the
  // parking budget has room: true when parked.
  bool Park(const grpc::ByteBuffer& bytes, int64_t releases_seen) {
    absl::MutexLock lock(&mu_);
    if (broken_ || held_items_ == 0) return false;
    absl::StatusOr<RequestMemoryBudget::Reservation> room =
        parking_->TryReserve(static_cast<int64_t>(bytes.Length()), budget_client_);
    if (!room.ok()) return false;
    parked_ = bytes;
    parked_room_ = *std::move(room);
    // A release between the refusal and now: try again at once.
    released_since_park_ = releases_ != releases_seen;
    return true;
  }

  // An item's reservation came back (the caller then looks at a parked item).
  void ReleasedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    --held_items_;
    ++releases_;
    released_since_park_ = true;
  }

  // Queues the answer of an item with the item's reservation `held`, if it has one,
  // which comes back once the answer is written: gRPC holds an answer until the client
  // has read it. Dropped when the stream is broken.
  void Enqueue(const v1::EmbedStreamResponse& response, bool from_engine,
               std::optional<RequestMemoryBudget::Reservation> held = std::nullopt) {
    grpc::ByteBuffer bytes;
    absl::Status serialized = SerializeResponse(response, &bytes);
    if (!serialized.ok()) {
      v1::EmbedStreamResponse error;
      *error.mutable_error() = ToRpcStatus(serialized);
      SerializeResponse(error, &bytes).IgnoreError();  // a small, valid message
    }
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      if (from_engine) --engine_pending_;
      if (!broken_) {
        queue_.push_back({std::move(bytes), std::move(held)});
      } else if (held.has_value()) {
        held.reset();
        ReleasedLocked();
      }
      actions = NextActionsLocked();
    }
    Run(actions);
  }

  // Answers the item `id` with `status`, counted and logged as a failed item; not the
  // items that failed because the stream itself ended, cancelled or past its deadline
  // (an item's deadline is its stream's): their answers are never sent, and the
  // stream counts once, as CANCELLED or DEADLINE_EXCEEDED. Items past the deadline
  // count once the stream is done, if it finished OK after all (OnDone()).
  void FailItem(std::string id, const absl::Status& status, bool from_engine,
                std::optional<RequestMemoryBudget::Reservation> held = std::nullopt) {
    if (status.code() == absl::StatusCode::kDeadlineExceeded) {
      absl::MutexLock lock(&mu_);
      if (past_deadline_items_.size() < kMaxPastDeadlineItems) {
        past_deadline_items_.emplace_back(id, status);
      }
    } else if (status.code() != absl::StatusCode::kCancelled ||
               !cancellation_->cancelled()) {
      recorder_->ItemFailed(record_, id, status);
    }
    v1::EmbedStreamResponse response;
    response.set_id(std::move(id));
    *response.mutable_error() = ToRpcStatus(status);
    Enqueue(response, from_engine, std::move(held));
  }

  // The engine's answer to an item holding `held`.
  void OnEmbedded(std::string id, absl::string_view field, bool text,
                  absl::StatusOr<EmbedResult> result,
                  RequestMemoryBudget::Reservation held) {
    absl::Status status = result.status();
    if (status.ok())
      status = CheckShape(*result, 1, engine_->description().embed_dim, text);
    if (!status.ok()) {
      // The engine names the item "<field>[0]"; in a stream item it is just <field>.
      status =
          RenameEngineItems(status, field, [field](int) { return std::string(field); });
      FailItem(std::move(id), status, /*from_engine=*/true, std::move(held));
      return;
    }
    v1::EmbedStreamResponse response;
    response.set_id(std::move(id));
    response.mutable_embedding()->mutable_values()->Add(result->values.begin(),
                                                        result->values.end());
    if (text) {
      response.set_truncated(result->truncated[0]);
      response.set_num_tokens(static_cast<uint32_t>(result->num_tokens[0]));
    }
    Enqueue(response, /*from_engine=*/true, std::move(held));
  }

  void StartItem(const grpc::ByteBuffer& bytes) {
    v1::EmbedStreamRequest item;
    if (absl::Status parsed =
            ParseRequest(bytes, &item, limits_.max_items_per_request, KeepFieldName);
        !parsed.ok()) {
      // Echo the id when it can be read (and sent back) at all.
      std::string id =
          ReadUtf8Field(Flatten(bytes), v1::EmbedStreamRequest::kIdFieldNumber)
              .value_or("");
      if (id.size() > static_cast<size_t>(kMaxStreamIdBytes)) id.clear();
      FailItem(std::move(id), parsed, /*from_engine=*/false);
      return;
    }
    std::string* item_id = item.mutable_id();
    absl::Status invalid;
    if (item_id->size() > static_cast<size_t>(kMaxStreamIdBytes)) {
      invalid = InvalidArgumentForField(
          "id", absl::StrCat("id of ", item_id->size(), " bytes is over the limit of ",
                             kMaxStreamIdBytes, " bytes"));
      // Not echoed: an error as large as the id could pass the send limit, and a
      // response gRPC refuses to send ends the whole stream.
      item_id->clear();
    }
    // A valid item's bytes and its answer's count against the budget until the answer
    // is written (the reservation travels in the engine's callback, then with the
    // answer). An invalid item fails with its own error before it is weighed: it
    // would hold nothing, and is no refusal.
    // Refused while the stream's own items hold memory, the item waits for them
    // (Park()) rather than fail: only a refusal that fails it is counted.
    bool parked = false;
    const auto reserve = [&]() -> absl::StatusOr<RequestMemoryBudget::Reservation> {
      // The item and its answer: its id, an embedding, a text's truncated and
      // num_tokens (at most 8 bytes).
      const int64_t item_bytes = static_cast<int64_t>(bytes.Length());
      int64_t answer_bytes =
          static_cast<int64_t>(FieldBytes(item_id->size()) +
                               EmbeddingsBytes(1, engine_->description().embed_dim) + 8);
      // As a unary call's response beside its request (ReserveBeside()): the part of
      // the answer past the whole budget, or past the client's share, is left out, so
      // that an item as large as the largest message still passes an empty budget
      // (which startup makes at least that large) instead of failing every retry.
      for (const int64_t limit :
           {request_memory_->capacity(),
            budget_client_.empty() ? 0 : request_memory_->per_client_capacity()}) {
        if (limit > 0) {
          answer_bytes = std::min(answer_bytes, std::max<int64_t>(limit - item_bytes, 0));
        }
      }
      const int64_t size = item_bytes + answer_bytes;
      const int64_t releases_seen = ReleasesSoFar();
      absl::StatusOr<RequestMemoryBudget::Reservation> held =
          request_memory_->TryReserve(size, budget_client_);
      if (held.ok()) return held;
      parked = Park(bytes, releases_seen);
      if (parked) return held;
      return request_memory_->Reserve(size, budget_client_);
    };
    absl::StatusOr<RequestMemoryBudget::Reservation> reservation;
    EmbedOptions options;
    options.normalize = OptionalTrue(item.has_normalize(), item.normalize());
    options.truncate = OptionalTrue(item.has_truncate(), item.truncate());
    options.deadline = deadline_.at();
    options.cancellation = cancellation_;
    switch (item.input_case()) {
      case v1::EmbedStreamRequest::kImage: {
        absl::StatusOr<ImageInput> image = ToImageInput(item.image(), limits_, "image");
        if (invalid.ok()) invalid = image.status();
        if (invalid.ok()) {
          reservation = reserve();
          if (parked) return;
          invalid = reservation.status();
        }
        if (!invalid.ok()) break;
        std::vector<ImageInput> images;
        images.push_back(*std::move(image));
        StartEngine();
        engine_->EmbedImages(
            std::move(images), options, "image",
            [this, id = std::move(*item_id),
             held = *std::move(reservation)](absl::StatusOr<EmbedResult> r) mutable {
              // Moved out: the engine may destroy its callback only after the stream,
              // and so perhaps the service, is gone.
              OnEmbedded(std::move(id), "image", false, std::move(r), std::move(held));
            });
        return;
      }
      case v1::EmbedStreamRequest::kText: {
        if (invalid.ok()) invalid = ValidateText(item.text(), limits_, "text");
        if (invalid.ok()) {
          reservation = reserve();
          if (parked) return;
          invalid = reservation.status();
        }
        if (!invalid.ok()) break;
        std::vector<std::string> texts;
        texts.push_back(std::move(*item.mutable_text()));
        StartEngine();
        engine_->EmbedTexts(
            std::move(texts), options, "text",
            [this, id = std::move(*item_id),
             held = *std::move(reservation)](absl::StatusOr<EmbedResult> r) mutable {
              // Moved out: the engine may destroy its callback only after the stream,
              // and so perhaps the service, is gone.
              OnEmbedded(std::move(id), "text", true, std::move(r), std::move(held));
            });
        return;
      }
      case v1::EmbedStreamRequest::INPUT_NOT_SET:
        if (invalid.ok()) invalid = InvalidArgumentForField("input", "set image or text");
        break;
    }
    FailItem(std::move(*item_id), invalid, /*from_engine=*/false);
  }

  // An item holding a reservation goes to the engine.
  void StartEngine() {
    absl::MutexLock lock(&mu_);
    ++engine_pending_;
    ++held_items_;
  }

  Engine* const engine_;
  RequestMemoryBudget* const request_memory_;
  RequestMemoryBudget* const parking_;  // bounds the bytes of parked items
  const std::string budget_client_;     // BudgetClientOf() this call
  const RequestLimits limits_;
  const int max_in_flight_;
  const CallDeadline deadline_;
  const RpcRecorder* const recorder_;
  // Ended in OnDone().
  RpcRecorder::Call record_;
  const std::shared_ptr<CancellationFlag> cancellation_ =
      std::make_shared<CancellationFlag>();

  // The read target: written by gRPC while a read is outstanding, emptied by
  // OnReadDone() before the next read is started.
  grpc::ByteBuffer read_;
  // The answer being written: set under mu_ before StartWrite(), untouched until
  // OnWriteDone().
  grpc::ByteBuffer write_;

  absl::Mutex mu_;
  bool reading_ ABSL_GUARDED_BY(mu_) = true;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool half_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // What the call finished with, and whether OnCancel() came (before or after).
  absl::Status finish_status_ ABSL_GUARDED_BY(mu_);
  // Items that failed past the stream's deadline, for OnDone(): the items in flight
  // and the few read before gRPC's timer ends the stream, kept up to a bound.
  static constexpr size_t kMaxPastDeadlineItems = 1024;
  std::vector<std::pair<std::string, absl::Status>> past_deadline_items_
      ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // Set just before Finish(), read by OnDone(): orders the call's writes before its
  // deletion where ThreadSanitizer can see it.
  std::atomic<bool> finish_started_{false};
  // Set at the end of the constructor, read first by each of gRPC's callbacks: gRPC
  // hands the call to its threads inside its core library, where ThreadSanitizer cannot
  // see that the constructor's writes come first.
  std::atomic<bool> constructed_{false};
  // Items read whose answer is not written yet.
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  // Engine requests whose callback has not run yet.
  int engine_pending_ ABSL_GUARDED_BY(mu_) = 0;
  // Items whose reservation has not come back yet: from their start until their
  // answer is written (or dropped with a broken stream).
  int held_items_ ABSL_GUARDED_BY(mu_) = 0;
  // An item the request memory budget refused while held_items_ > 0, read but not
  // started (counted in in_flight_), and whether a reservation came back since.
  std::optional<grpc::ByteBuffer> parked_ ABSL_GUARDED_BY(mu_);
  RequestMemoryBudget::Reservation parked_room_ ABSL_GUARDED_BY(mu_);  // in parking_
  bool released_since_park_ ABSL_GUARDED_BY(mu_) = false;
  int64_t releases_ ABSL_GUARDED_BY(mu_) = 0;
  // Serialized answers waiting for their turn to be written, each with its item's
  // reservation if it has one (held_items_ counts it), and that of the answer being
  // written.
  struct Answer {
    grpc::ByteBuffer bytes;
    std::optional<RequestMemoryBudget::Reservation> held;
  };
  std::deque<Answer> queue_ ABSL_GUARDED_BY(mu_);
  std::optional<RequestMemoryBudget::Reservation> write_held_ ABSL_GUARDED_BY(mu_);
};

// Ends a unary call refused before any work started (a bad bearer token): counted
// like any other call, but not logged per call; Authenticate() logs refusals at a
// bounded rate, so a client looping with a bad token cannot flood the log.
grpc::ServerUnaryReactor* FinishedUnary(grpc::CallbackServerContext* context,
                                        const RpcRecorder& recorder,
                                        absl::string_view rpc,
                                        const absl::Status& status) {
  RpcRecorder::Call call = recorder.Start(rpc, context->peer(), RpcRecorder::Kind::kUnary,
                                          AssignRequestId(context));
  recorder.End(call, status, RpcRecorder::Logging::kQuiet);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A stream refused before any work started (a bad bearer token): finishes at once
// without reading; counted, not logged per call (as FinishedUnary).
class FinishedStream final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  FinishedStream(grpc::CallbackServerContext& context, const RpcRecorder& recorder,
                 absl::string_view rpc, const absl::Status& status) {
    RpcRecorder::Call call = recorder.Start(
        rpc, context.peer(), RpcRecorder::Kind::kStream, AssignRequestId(&context));
    recorder.End(call, status, RpcRecorder::Logging::kQuiet);
    Finish(ToGrpcStatus(status));
  }
  void OnDone() override { delete this; }
};

// GetModelInfo's answer.
void DescribeModel(const ModelDescription& d, v1::ModelInfo* out) {
  out->set_name(d.name);
  v1::VisionTowerInfo* vision = out->mutable_vision();
  vision->set_architecture(d.vision_architecture);
  vision->set_width(d.vision_width);
  vision->set_layers(d.vision_layers);
  vision->set_patch_size(d.vision_patch_size);
  vision->set_heads(d.vision_heads);
  for (const int blocks : d.vision_stage_layers) vision->add_stage_layers(blocks);
  v1::TextTowerInfo* text = out->mutable_text();
  text->set_architecture(d.text_architecture);
  text->set_width(d.text_width);
  text->set_layers(d.text_layers);
  text->set_heads(d.text_heads);
  out->set_embed_dim(d.embed_dim);
  out->set_image_size(d.image_size);
  out->mutable_image_mean()->Add(d.image_mean.begin(), d.image_mean.end());
  out->mutable_image_std()->Add(d.image_std.begin(), d.image_std.end());
  out->set_context_length(d.context_length);
  out->set_vocab_size(d.vocab_size);
  out->set_logit_scale(d.logit_scale);
  out->set_precision(d.precision);
  out->set_device(d.device);
  out->set_checkpoint_format(d.checkpoint_format);
  out->set_checkpoint_sha256(d.checkpoint_sha256);
  out->set_random_weights(d.random_weights);
  out->set_exif_orientation(d.exif_orientation);
}

}  // namespace

int64_t LargestOneItemResponseBytes(const ModelDescription& d) {
  v1::ModelInfo info;
  DescribeModel(d, &info);
  v1::EmbedTextResponse text;
  text.add_embeddings()->mutable_values()->Resize(d.embed_dim, 1.0f);
  text.set_dim(static_cast<uint32_t>(d.embed_dim));
  text.set_model(d.name);
  text.add_truncated(true);
  text.add_num_tokens(static_cast<uint32_t>(d.context_length));
  v1::EmbedStreamResponse stream;
  stream.set_id(std::string(kMaxStreamIdBytes, 'x'));
  stream.mutable_embedding()->mutable_values()->Resize(d.embed_dim, 1.0f);
  stream.set_truncated(true);
  stream.set_num_tokens(static_cast<uint32_t>(d.context_length));
  return static_cast<int64_t>(
      std::max({info.ByteSizeLong(), text.ByteSizeLong(), stream.ByteSizeLong()}));
}

// ---------------------------------------------------------------------------
// ClipService

absl::StatusOr<std::unique_ptr<ClipService>> ClipService::Create(
    Engine* engine, const ClipServiceOptions& options) {
  if (engine == nullptr) return absl::InvalidArgumentError("ClipService needs an engine");
  if (absl::Status status = ValidateLimits(options.limits); !status.ok()) return status;
  if (options.max_stream_items_in_flight < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_stream_items_in_flight must be at least 1, got ",
                     options.max_stream_items_in_flight));
  }
  if (options.max_classify_prompts < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_classify_prompts must be at least 1, got ", options.max_classify_prompts));
  }
  // The message size limit is the server's, checked where it is known (main.cc); the
  // rest of the budget's checks are the same.
  if (absl::Status status = ValidateRequestMemoryLimit(
          options.max_request_memory_bytes, /*max_message_bytes=*/0,
          options.max_request_memory_per_client_bytes);
      !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_request_memory_bytes and max_request_memory_per_client_bytes: ",
                     status.message()));
  }
  if (options.max_response_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_response_bytes must not be negative, got ", options.max_response_bytes));
  }
  if (options.label_cache_capacity < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "label_cache_capacity must not be negative, got ", options.label_cache_capacity));
  }
  // EmbedText and Similarity send up to max_items_per_request texts to the engine in
  // one call, Classify up to max_classify_prompts: a limit above what one call may
  // carry would let valid requests through that the engine must then refuse.
  const int max_texts = engine->max_texts_per_call();
  if (options.limits.max_items_per_request > max_texts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_items_per_request (", options.limits.max_items_per_request,
        ") is more than the engine queues for one request (", max_texts,
        ", its max_queue_size): such text requests could never be admitted"));
  }
  if (options.max_classify_prompts > max_texts) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_classify_prompts (", options.max_classify_prompts,
                     ") is more than the engine queues for one request (", max_texts,
                     ", its max_queue_size)"));
  }
  const ModelDescription& description = engine->description();
  if (description.embed_dim < 1 || description.context_length < 1 ||
      !std::isfinite(description.logit_scale) || !(description.logit_scale > 0)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the engine describes embed_dim=", description.embed_dim, " context_length=",
        description.context_length, " logit_scale=", description.logit_scale,
        "; each must be positive (and the scale finite)"));
  }
  if (const int64_t needed = LargestOneItemResponseBytes(description);
      options.max_response_bytes > 0 && options.max_response_bytes < needed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_response_bytes (", options.max_response_bytes,
        ") is less than a one-item response of this model takes (", needed, " bytes, ",
        description.embed_dim, "-wide embeddings): no call could be answered"));
  }
  return std::unique_ptr<ClipService>(new ClipService(engine, options));
}

ClipService::ClipService(Engine* engine, const ClipServiceOptions& options)
    : engine_(engine),
      options_(options),
      recorder_([&options] {
        RpcRecorderOptions recorder;
        recorder.metrics = options.metrics;
        recorder.slow_request_threshold = options.slow_request_threshold;
        recorder.clock = options.clock;
        return recorder;
      }()),
      label_cache_(static_cast<size_t>(options.label_cache_capacity)),
      request_memory_(options.max_request_memory_bytes,
                      options.max_request_memory_per_client_bytes, options.metrics),
      stream_parking_(options.max_request_memory_bytes,
                      options.max_request_memory_per_client_bytes, nullptr) {}

absl::Status ClipService::Authenticate(const grpc::CallbackServerContext& context) const {
  if (options_.authenticator == nullptr) return absl::OkStatus();
  absl::Status status = options_.authenticator->Authenticate(context.client_metadata());
  if (!status.ok()) {
    // At most one line per 10 s, since a client with a bad token may call in a loop.
    // The message names what was wrong, never what was sent.
    LOG_EVERY_T(WARNING, 10) << "refused a call from " << context.peer() << ": "
                             << status.message();
  }
  return status;
}

grpc::ServerUnaryReactor* ClipService::EmbedImage(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* request_bytes,
                                                  grpc::ByteBuffer* response_bytes) {
  if (absl::Status auth = Authenticate(*context); !auth.ok()) {
    return FinishedUnary(context, recorder_, "EmbedImage", auth);
  }
  auto* call = new RawUnaryCall<v1::EmbedImageRequest, v1::EmbedImageResponse>(
      *context, UnaryCall::Env{&recorder_, engine_, options_.max_response_bytes},
      "EmbedImage", response_bytes);
  if (!AdmitAndParse(&request_memory_, *request_bytes, *context, call, &call->request,
                     options_.limits.max_items_per_request, KeepFieldName)) {
    return call;
  }
  const v1::EmbedImageRequest* request = &call->request;
  v1::EmbedImageResponse* response = &call->response;
  absl::StatusOr<std::vector<ImageInput>> images =
      ToImageInputs(request->images(), options_.limits, "images");
  if (!images.ok()) {
    call->FinishWith(images.status());
    return call;
  }
  const int count = static_cast<int>(images->size());
  const int dim = engine_->description().embed_dim;
  if (absl::Status fits =
          call->AdmitResponse(EmbeddingsBytes(static_cast<size_t>(count), dim),
                              absl::StrCat(count, " embeddings of ", dim, " floats"));
      !fits.ok()) {
    call->FinishWith(std::move(fits));
    return call;
  }
  engine_->EmbedImages(
      *std::move(images),
      call->MakeEmbedOptions(OptionalTrue(request->has_normalize(), request->normalize()),
                             /*truncate=*/true),
      "images", [this, call, response, count](absl::StatusOr<EmbedResult> result) {
        const ModelDescription& description = engine_->description();
        absl::Status status = result.status();
        if (status.ok())
          status = CheckShape(*result, count, description.embed_dim, false);
        if (status.ok()) {
          AddEmbeddings(*result, response->mutable_embeddings());
          response->set_dim(result->dim);
          response->set_model(description.name);
        }
        call->FinishWith(status);
      });
  return call;
}

grpc::ServerUnaryReactor* ClipService::EmbedText(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* request_bytes,
                                                 grpc::ByteBuffer* response_bytes) {
  if (absl::Status auth = Authenticate(*context); !auth.ok()) {
    return FinishedUnary(context, recorder_, "EmbedText", auth);
  }
  auto* call = new RawUnaryCall<v1::EmbedTextRequest, v1::EmbedTextResponse>(
      *context, UnaryCall::Env{&recorder_, engine_, options_.max_response_bytes},
      "EmbedText", response_bytes);
  if (!AdmitAndParse(&request_memory_, *request_bytes, *context, call, &call->request,
                     options_.limits.max_items_per_request, KeepFieldName)) {
    return call;
  }
  const v1::EmbedTextRequest* request = &call->request;
  v1::EmbedTextResponse* response = &call->response;
  absl::StatusOr<std::vector<std::string>> texts =
      ToTextInputs(request->texts(), options_.limits, "texts");
  if (!texts.ok()) {
    call->FinishWith(texts.status());
    return call;
  }
  const int count = static_cast<int>(texts->size());
  const int dim = engine_->description().embed_dim;
  if (absl::Status fits = call->AdmitResponse(
          // and at least a byte each for truncated and num_tokens
          EmbeddingsBytes(static_cast<size_t>(count), dim) +
              2 * static_cast<size_t>(count),
          absl::StrCat(count, " embeddings of ", dim, " floats"));
      !fits.ok()) {
    call->FinishWith(std::move(fits));
    return call;
  }
  engine_->EmbedTexts(
      *std::move(texts),
      call->MakeEmbedOptions(OptionalTrue(request->has_normalize(), request->normalize()),
                             OptionalTrue(request->has_truncate(), request->truncate())),
      "texts", [this, call, response, count](absl::StatusOr<EmbedResult> result) {
        const ModelDescription& description = engine_->description();
        absl::Status status = result.status();
        if (status.ok()) status = CheckShape(*result, count, description.embed_dim, true);
        if (status.ok()) {
          AddEmbeddings(*result, response->mutable_embeddings());
          response->set_dim(result->dim);
          response->set_model(description.name);
          for (int i = 0; i < count; ++i) {
            response->add_truncated(result->truncated[i]);
            response->add_num_tokens(static_cast<uint32_t>(result->num_tokens[i]));
          }
        }
        call->FinishWith(status);
      });
  return call;
}

grpc::ServerUnaryReactor* ClipService::Similarity(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* request_bytes,
                                                  grpc::ByteBuffer* response_bytes) {
  if (absl::Status auth = Authenticate(*context); !auth.ok()) {
    return FinishedUnary(context, recorder_, "Similarity", auth);
  }
  const ModelDescription& description = engine_->description();
  const RequestLimits& limits = options_.limits;
  auto* call = new SimilarityCall(
      *context, UnaryCall::Env{&recorder_, engine_, options_.max_response_bytes},
      response_bytes, description.embed_dim);
  if (!AdmitAndParse(&request_memory_, *request_bytes, *context, call, &call->request,
                     options_.limits.max_items_per_request, SimilarityFieldName)) {
    return call;
  }
  const v1::SimilarityRequest* request = &call->request;

  // Validate everything before the engine sees anything.
  std::vector<ImageInput> images;
  std::vector<std::string> texts;
  absl::Status status;
  switch (request->images().kind_case()) {
    case v1::ImageSet::kImages: {
      absl::StatusOr<std::vector<ImageInput>> inputs =
          ToImageInputs(request->images().images().images(), limits, "images");
      status = inputs.status();
      if (status.ok()) {
        images = *std::move(inputs);
        call->num_images = static_cast<int>(images.size());
      }
      break;
    }
    case v1::ImageSet::kEmbeddings: {
      absl::StatusOr<std::vector<float>> rows =
          ToNormalizedEmbeddings(request->images().embeddings().embeddings(),
                                 description.embed_dim, limits, "images");
      status = rows.status();
      if (status.ok()) {
        call->image_rows = *std::move(rows);
        call->num_images = request->images().embeddings().embeddings_size();
      }
      break;
    }
    case v1::ImageSet::KIND_NOT_SET:
      status = InvalidArgumentForField("images", "set images or embeddings");
      break;
  }
  if (status.ok()) {
    switch (request->texts().kind_case()) {
      case v1::TextSet::kTexts: {
        absl::StatusOr<std::vector<std::string>> inputs =
            ToTextInputs(request->texts().texts().texts(), limits, "texts");
        status = inputs.status();
        if (status.ok()) {
          texts = *std::move(inputs);
          call->num_texts = static_cast<int>(texts.size());
        }
        break;
      }
      case v1::TextSet::kEmbeddings: {
        absl::StatusOr<std::vector<float>> rows =
            ToNormalizedEmbeddings(request->texts().embeddings().embeddings(),
                                   description.embed_dim, limits, "texts");
        status = rows.status();
        if (status.ok()) {
          call->text_rows = *std::move(rows);
          call->num_texts = request->texts().embeddings().embeddings_size();
        }
        break;
      }
      case v1::TextSet::KIND_NOT_SET:
        status = InvalidArgumentForField("texts", "set texts or embeddings");
        break;
    }
  }
  if (status.ok()) {
    absl::StatusOr<float> scale = ResolveLogitScale(
        request->has_temperature(), request->temperature(), description.logit_scale);
    status = scale.status();
    if (status.ok()) call->scale = *scale;
  }
  if (status.ok() && request->paired() && call->num_images != call->num_texts) {
    status = InvalidArgumentForField(
        "paired",
        absl::StrCat("paired inputs need as many texts as images; got ", call->num_images,
                     " images and ", call->num_texts, " texts"));
  }
  if (status.ok()) {
    // Both logit matrices and the probabilities.
    const size_t n = static_cast<size_t>(call->num_images);
    const size_t m = static_cast<size_t>(call->num_texts);
    status =
        call->AdmitResponse(3 * MatrixBytes(n, m),
                            absl::StrCat("three ", n, " x ", m, " matrices of floats"));
  }
  if (!status.ok()) {
    call->FinishWith(status);
    return call;
  }
  call->paired = request->paired();

  // Both towers run concurrently; the last answer computes and finishes.
  const bool embed_images = !images.empty();
  const bool embed_texts = !texts.empty();
  call->Expect(int{embed_images} + int{embed_texts});
  if (embed_images) {
    engine_->EmbedImages(std::move(images),
                         call->MakeEmbedOptions(/*normalize=*/true, /*truncate=*/true),
                         "images", [call](absl::StatusOr<EmbedResult> result) {
                           call->OnEmbedded(std::move(result), /*texts=*/false);
                         });
  }
  if (embed_texts) {
    engine_->EmbedTexts(
        std::move(texts),
        call->MakeEmbedOptions(/*normalize=*/true, OptionalTrue(request->has_truncate(),
                                                                request->truncate())),
        "texts", [call](absl::StatusOr<EmbedResult> result) {
          call->OnEmbedded(std::move(result), /*texts=*/true);
        });
  }
  return call;
}

grpc::ServerUnaryReactor* ClipService::Classify(grpc::CallbackServerContext* context,
                                                const grpc::ByteBuffer* request_bytes,
                                                grpc::ByteBuffer* response_bytes) {
  if (absl::Status auth = Authenticate(*context); !auth.ok()) {
    return FinishedUnary(context, recorder_, "Classify", auth);
  }
  const ModelDescription& description = engine_->description();
  const RequestLimits& limits = options_.limits;
  const int dim = description.embed_dim;
  auto* call = new ClassifyCall(
      *context, UnaryCall::Env{&recorder_, engine_, options_.max_response_bytes},
      response_bytes, dim, &label_cache_);
  if (!AdmitAndParse(&request_memory_, *request_bytes, *context, call, &call->request,
                     options_.limits.max_items_per_request, KeepFieldName)) {
    return call;
  }
  const v1::ClassifyRequest* request = &call->request;

  absl::StatusOr<std::vector<ImageInput>> images =
      ToImageInputs(request->images(), limits, "images");
  absl::Status status = images.status();
  if (status.ok()) status = ValidateLabels(request->labels(), limits);
  absl::StatusOr<std::vector<std::string>> templates;
  if (status.ok()) {
    templates = ResolveTemplates(request->templates(), limits);
    status = templates.status();
  }
  if (status.ok()) status = ValidatePromptSizes(request->labels(), *templates, limits);
  if (status.ok()) {
    const int64_t prompts = int64_t{request->labels_size()} * templates->size();
    if (prompts > options_.max_classify_prompts) {
      status = InvalidArgumentForField(
          "labels",
          absl::StrCat(request->labels_size(), " labels x ", templates->size(),
                       " templates = ", prompts, " prompts is over the limit of ",
                       options_.max_classify_prompts));
    }
  }
  if (status.ok()) {
    absl::StatusOr<float> scale = ResolveLogitScale(
        request->has_temperature(), request->temperature(), description.logit_scale);
    status = scale.status();
    if (status.ok()) call->scale = *scale;
  }
  if (!status.ok()) {
    call->FinishWith(status);
    return call;
  }

  const int num_labels = request->labels_size();
  call->top_k = ResolveTopK(request->top_k(), num_labels);
  if (absl::Status fits = call->AdmitResults(); !fits.ok()) {
    call->FinishWith(std::move(fits));
    return call;
  }
  call->num_templates = static_cast<int>(templates->size());
  call->templates_key = LabelEmbeddingCache::TemplatesKey(*templates);
  call->label_rows.resize(static_cast<size_t>(num_labels) * dim);
  std::vector<std::string> prompts;
  for (int label = 0; label < num_labels; ++label) {
    const LabelEmbeddingCache::Embedding cached = label_cache_.Lookup(
        LabelEmbeddingCache::Key(call->templates_key, request->labels(label)));
    const bool hit = cached != nullptr && cached->size() == static_cast<size_t>(dim);
    if (options_.metrics != nullptr) options_.metrics->RecordLabelCacheLookup(hit);
    if (hit) {
      std::copy(cached->begin(), cached->end(),
                call->label_rows.begin() + static_cast<size_t>(label) * dim);
      continue;
    }
    call->missing_labels.push_back(label);
    for (const std::string& template_text : *templates) {
      prompts.push_back(ApplyTemplate(template_text, request->labels(label)));
    }
  }

  const bool embed_prompts = !prompts.empty();
  call->Expect(1 + int{embed_prompts});
  engine_->EmbedImages(*std::move(images),
                       call->MakeEmbedOptions(/*normalize=*/true, /*truncate=*/true),
                       "images", [call](absl::StatusOr<EmbedResult> result) {
                         call->OnImagesEmbedded(std::move(result));
                       });
  if (embed_prompts) {
    engine_->EmbedTexts(std::move(prompts),
                        call->MakeEmbedOptions(/*normalize=*/true, /*truncate=*/true),
                        std::string(ClassifyCall::kPromptsField),
                        [call](absl::StatusOr<EmbedResult> result) {
                          call->OnPromptsEmbedded(std::move(result));
                        });
  }
  return call;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ClipService::EmbedStream(
    grpc::CallbackServerContext* context) {
  if (absl::Status auth = Authenticate(*context); !auth.ok()) {
    return new FinishedStream(*context, recorder_, "EmbedStream", auth);
  }
  return new EmbedStreamCall(*context, engine_, options_, &recorder_, &request_memory_,
                             &stream_parking_);
}

grpc::ServerUnaryReactor* ClipService::Tokenize(grpc::CallbackServerContext* context,
                                                const grpc::ByteBuffer* request_bytes,
                                                grpc::ByteBuffer* response_bytes) {
  if (absl::Status auth = Authenticate(*context); !auth.ok()) {
    return FinishedUnary(context, recorder_, "Tokenize", auth);
  }
  auto* call = new RawUnaryCall<v1::TokenizeRequest, v1::TokenizeResponse>(
      *context, UnaryCall::Env{&recorder_, engine_, options_.max_response_bytes},
      "Tokenize", response_bytes);
  if (!AdmitAndParse(&request_memory_, *request_bytes, *context, call, &call->request,
                     options_.limits.max_items_per_request, KeepFieldName)) {
    return call;
  }
  const v1::TokenizeRequest* request = &call->request;
  v1::TokenizeResponse* response = &call->response;
  absl::StatusOr<std::vector<std::string>> texts =
      ToTextInputs(request->texts(), options_.limits, "texts");
  if (!texts.ok()) {
    call->FinishWith(texts.status());
    return call;
  }
  if (absl::Status reserved = call->ReserveResponse(
          TokenizedTextsBytes(*texts, engine_->description().context_length));
      !reserved.ok()) {
    call->FinishWith(std::move(reserved));
    return call;
  }
  const size_t count = texts->size();
  engine_->Tokenize(
      *std::move(texts),
      call->MakeEmbedOptions(/*normalize=*/false,
                             OptionalTrue(request->has_truncate(), request->truncate())),
      "texts",
      [this, call, response, count](absl::StatusOr<std::vector<TokenizedResult>> result) {
        absl::Status status = result.status();
        if (status.ok() && result->size() != count) {
          status = absl::InternalError(
              absl::StrCat("engine tokenized ", result->size(), " of ", count, " texts"));
        }
        if (status.ok()) {
          for (TokenizedResult& tokens : *result) {
            v1::TokenizedText* out = response->add_texts();
            out->mutable_ids()->Add(tokens.ids.begin(), tokens.ids.end());
            out->set_truncated(tokens.truncated);
          }
          response->set_context_length(
              static_cast<uint32_t>(engine_->description().context_length));
        }
        call->FinishWith(status);
      });
  return call;
}

grpc::ServerUnaryReactor* ClipService::GetModelInfo(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request_bytes,
                                                    grpc::ByteBuffer* response_bytes) {
  if (absl::Status auth = Authenticate(*context); !auth.ok()) {
    return FinishedUnary(context, recorder_, "GetModelInfo", auth);
  }
  auto* call = new RawUnaryCall<v1::GetModelInfoRequest, v1::ModelInfo>(
      *context, UnaryCall::Env{&recorder_, engine_, options_.max_response_bytes},
      "GetModelInfo", response_bytes);
  // The request has no fields: only unknown ones, from a newer client, are counted.
  if (!AdmitAndParse(&request_memory_, *request_bytes, *context, call, &call->request,
                     options_.limits.max_items_per_request, KeepFieldName)) {
    return call;
  }
  DescribeModel(engine_->description(), &call->response);
  call->FinishWith(absl::OkStatus());
  return call;
}

}  // namespace clipserve
