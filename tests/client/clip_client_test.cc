// ClipClient against in-process fake ClipServices on loopback: retries with
// RetryInfo, rich error details, EmbedStream ordering, per-item errors, retried
// items and broken streams, stop-on-error, stall timeout, round-robin over two
// servers, and the bench load generator's bookkeeping.

#include "client/clip_client.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/bench.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/error_details.h"
#include "gtest/gtest.h"
#include "server/common/fake_clock.h"
#include "tests/testing/poll_until.h"
#include "tests/testing/tcp_proxy.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

google::rpc::Status RpcError(int code, const std::string& message,
                             absl::Duration retry = absl::ZeroDuration(),
                             const std::string& bad_field = "") {
  google::rpc::Status status;
  status.set_code(code);
  status.set_message(message);
  if (retry > absl::ZeroDuration()) {
    google::rpc::RetryInfo info;
    info.mutable_retry_delay()->set_nanos(
        static_cast<int32_t>(absl::ToInt64Nanoseconds(retry)));
    auto* any = status.add_details();
    any->set_type_url("type.googleapis.com/google.rpc.RetryInfo");
    any->set_value(info.SerializeAsString());
  }
  if (!bad_field.empty()) {
    google::rpc::BadRequest bad;
    bad.add_field_violations()->set_field(bad_field);
    auto* any = status.add_details();
    any->set_type_url("type.googleapis.com/google.rpc.BadRequest");
    any->set_value(bad.SerializeAsString());
  }
  return status;
}

grpc::Status GrpcError(const google::rpc::Status& rpc) {
  grpc::Status status;
  grpc::SetErrorDetails(rpc, &status);
  return status;
}

// Texts drive the fake: "bad..." fails with INVALID_ARGUMENT, "busy..." is refused
// with RESOURCE_EXHAUSTED the first time it is seen, "hang" is never answered. The
// embedding of a text is {its length, its first byte} in streams ("wide" gets a third
// float), {its length} in EmbedText (which leaves "unanswered" out of its reply).
class FakeClipService final : public v1::ClipService::Service {
 public:
  std::atomic<int> embed_image_calls{0};
  std::atomic<int> stream_calls{0};
  std::atomic<int> refuse_first_unary{0};  // unary calls to refuse with RetryInfo
  // Unary calls to answer CANCELLED, as gRPC answers one whose request was still
  // arriving when the server began to shut down.
  std::atomic<int> cancel_first_unary{0};
  std::atomic<int> unavailable_after{
      -1};  // image calls answered, then UNAVAILABLE ever after
  std::atomic<int> break_first_stream_after{-1};  // answers before UNAVAILABLE
  std::atomic<int> hanging{0};                    // "hang" items being held
  int stream_batch = 3;  // items read before answering them in reverse

  grpc::Status EmbedImage(grpc::ServerContext* context,
                          const v1::EmbedImageRequest* request,
                          v1::EmbedImageResponse* response) override {
    RecordRequestId(*context);
    const int call = ++embed_image_calls;
    if (call <= cancel_first_unary) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "CANCELLED");
    }
    if (call <= refuse_first_unary) {
      return GrpcError(RpcError(8, "image queue is full", absl::Milliseconds(30)));
    }
    if (unavailable_after >= 0 && call > unavailable_after) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server went away");
    }
    for (int i = 0; i < request->images_size(); ++i) {
      if (request->images(i).encoded() == "bad") {
        return GrpcError(RpcError(3, absl::StrCat("images[", i, "]: not an image"),
                                  absl::ZeroDuration(), absl::StrCat("images[", i, "]")));
      }
      response->add_embeddings()->add_values(
          static_cast<float>(request->images(i).encoded().size()));
    }
    response->set_dim(1);
    return grpc::Status::OK;
  }

  grpc::Status EmbedText(grpc::ServerContext*, const v1::EmbedTextRequest* request,
                         v1::EmbedTextResponse* response) override {
    absl::MutexLock lock(&mu_);
    for (const std::string& text : request->texts()) {
      texts_.push_back(text);
      if (text == "unanswered") continue;  // a server that drops an item
      response->add_embeddings()->add_values(static_cast<float>(text.size()));
    }
    response->set_dim(1);
    return grpc::Status::OK;
  }

  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* info) override {
    info->set_name(name);
    return grpc::Status::OK;
  }

  grpc::Status EmbedStream(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::EmbedStreamResponse, v1::EmbedStreamRequest>* stream)
      override {
    RecordRequestId(*context);
    const int call = ++stream_calls;
    int answered = 0;
    std::vector<v1::EmbedStreamRequest> batch;
    bool more = true;
    while (more) {
      v1::EmbedStreamRequest item;
      more = stream->Read(&item);
      if (more) batch.push_back(item);
      if (batch.size() < static_cast<size_t>(stream_batch) && more) continue;
      std::reverse(batch.begin(), batch.end());
      for (const v1::EmbedStreamRequest& request : batch) {
        if (call == 1 && answered == break_first_stream_after) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server restarting");
        }
        const std::string& text = request.text();
        v1::EmbedStreamResponse response;
        response.set_id(request.id());
        if (text == "hang") {
          ++hanging;
          while (!context->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
          return grpc::Status::CANCELLED;
        }
        if (text == "no result") {
          // Neither an embedding nor an error: a broken server.
        } else if (text.rfind("bad", 0) == 0) {
          *response.mutable_error() =
              RpcError(3, "text: bad text", absl::ZeroDuration(), "text");
        } else if (text.rfind("busy", 0) == 0 && Seen(text)) {
          *response.mutable_error() =
              RpcError(8, "text queue is full", absl::Milliseconds(20));
        } else {
          response.mutable_embedding()->add_values(static_cast<float>(text.size()));
          response.mutable_embedding()->add_values(text.empty() ? 0.0f : text[0]);
          if (text == "wide") response.mutable_embedding()->add_values(1);
          response.set_num_tokens(static_cast<uint32_t>(text.size()));
        }
        stream->Write(response);
        ++answered;
      }
      batch.clear();
    }
    return grpc::Status::OK;
  }

  std::string name = "fake";

  // Every text EmbedText was sent, in the order they came.
  std::vector<std::string> texts() {
    absl::MutexLock lock(&mu_);
    return texts_;
  }

  // The x-request-id of each EmbedImage and EmbedStream call, in order ("" if none).
  std::vector<std::string> request_ids() {
    absl::MutexLock lock(&mu_);
    return request_ids_;
  }

 private:
  void RecordRequestId(const grpc::ServerContext& context) {
    const auto found = context.client_metadata().find("x-request-id");
    absl::MutexLock lock(&mu_);
    request_ids_.push_back(found == context.client_metadata().end()
                               ? ""
                               : std::string(found->second.data(), found->second.size()));
  }

  // True the first time `text` is seen.
  bool Seen(const std::string& text) {
    absl::MutexLock lock(&mu_);
    if (std::find(seen_.begin(), seen_.end(), text) != seen_.end()) return false;
    seen_.push_back(text);
    return true;
  }
  absl::Mutex mu_;
  std::vector<std::string> seen_;
  std::vector<std::string> request_ids_;
  std::vector<std::string> texts_;
};

struct FakeServer {
  FakeClipService service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  // `max_receive_message_bytes` < 0: gRPC's default limit.
  // `welcome_any_ping`: accept client keepalive pings at any rate, idle or not.
  explicit FakeServer(std::string name = "fake", int max_receive_message_bytes = -1,
                      bool welcome_any_ping = false, int listen_port = 0) {
    service.name = std::move(name);
    grpc::ServerBuilder builder;
    if (max_receive_message_bytes >= 0) {
      builder.SetMaxReceiveMessageSize(max_receive_message_bytes);
    }
    if (welcome_any_ping) {
      builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                                 0);
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
    }
    builder.AddListeningPort(absl::StrCat("127.0.0.1:", listen_port),
                             grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
  }
  ~FakeServer() { server->Shutdown(gpr_time_0(GPR_CLOCK_REALTIME)); }
  std::string target() const { return absl::StrCat("127.0.0.1:", port); }
};

// A port that was just free, and is closed again: nothing listens there.
int JustFreedPort() {
  FakeServer gone;
  return gone.port;
}

std::unique_ptr<ClipClient> Connect(const std::string& target,
                                    std::vector<absl::Duration>* sleeps = nullptr) {
  ClientOptions options;
  options.target = target;
  options.deadline = absl::Seconds(10);
  if (sleeps != nullptr) {
    options.retry_environment.sleep = [sleeps](absl::Duration d) {
      sleeps->push_back(d);
      absl::SleepFor(d);
    };
    options.retry_environment.uniform = [] { return 0.0; };
  }
  auto client = ClipClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

v1::EmbedImageRequest Images(std::vector<std::string> encoded) {
  v1::EmbedImageRequest request;
  for (std::string& e : encoded) request.add_images()->set_encoded(std::move(e));
  return request;
}

TEST(ClipClientTest, CreateRejectsBadOptionsAndFutureFeatures) {
  ClientOptions options;
  options.target = "";
  EXPECT_EQ(ClipClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = ClientOptions();
  options.deadline = absl::ZeroDuration();
  EXPECT_EQ(ClipClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = ClientOptions();
  options.load_balancing_policy = "weighted_magic";
  EXPECT_EQ(ClipClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  // TLS material without TLS would be ignored, and the call sent in the clear.
  options = ClientOptions();
  options.tls.root_certificates_pem = "-----BEGIN CERTIFICATE-----";
  EXPECT_EQ(ClipClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = ClientOptions();
  options.tls.server_name_override = "clipserve.internal";
  EXPECT_EQ(ClipClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A client certificate needs its key, and the reverse.
  options = ClientOptions();
  options.tls.enabled = true;
  options.tls.cert_chain_pem = "cert";
  EXPECT_EQ(ClipClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.tls.cert_chain_pem = "";
  options.tls.private_key_pem = "key";
  EXPECT_EQ(ClipClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A token must fit in one header value.
  for (const char* token : {"two words", "line\nbreak", "tab\t", "caf\xc3\xa9"}) {
    options = ClientOptions();
    options.bearer_token = token;
    const absl::Status status = ClipClient::Create(options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << token;
    EXPECT_THAT(std::string(status.message()), Not(HasSubstr(token)));
  }
}

TEST(ClipClientTest, AcceptsTlsAndBearerTokenOptions) {
  ClientOptions options;
  options.tls.enabled = true;  // gRPC's default roots
  EXPECT_TRUE(ClipClient::Create(options).ok());
  options.tls.cert_chain_pem = "cert";
  options.tls.private_key_pem = "key";
  options.tls.server_name_override = "clipserve.internal";
  options.bearer_token = "s3cr3t-Token_value.~+/=";
  EXPECT_TRUE(ClipClient::Create(options).ok());
  options.tls = {};
  EXPECT_TRUE(ClipClient::Create(options).ok());  // plaintext + token
}

TEST(ClipClientTest, KeepaliveDefaultsAndLimits) {
  const ClientOptions defaults;
  EXPECT_EQ(defaults.keepalive_time, absl::Seconds(20));
  EXPECT_EQ(defaults.keepalive_timeout, absl::Seconds(10));
  ClientOptions options;
  options.keepalive_time = absl::InfiniteDuration();  // no pings
  EXPECT_TRUE(ClipClient::Create(options).ok());
  options.keepalive_time = absl::ZeroDuration();
  EXPECT_EQ(ClipClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = ClientOptions();
  options.keepalive_timeout = absl::InfiniteDuration();
  EXPECT_EQ(ClipClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.keepalive_timeout = -absl::Seconds(1);
  EXPECT_EQ(ClipClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A server that vanishes without closing its socket, played by a proxy that turns
// into a black hole, is found by the client's keepalive pings and its connection
// dropped: a call sent into it fails with UNAVAILABLE, which ClipClient retries, not
// with DEADLINE_EXCEEDED at its deadline. An idle connection is pinged again and
// again, not only once or twice.
TEST(ClipClientTest, KeepaliveDropsTheConnectionOfAVanishedServer) {
  FakeServer fake("fake", -1, /*welcome_any_ping=*/true);
  auto proxy = testing::TcpProxy::Start(fake.port);
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", (*proxy)->port());
  // gRPC sends a keepalive ping about once a second at most, however short this is.
  options.keepalive_time = absl::Milliseconds(100);
  // A ping answered late on a loaded machine must not drop the connection before the
  // black hole: slack, which costs its length once the pings go unanswered.
  options.keepalive_timeout = absl::Seconds(5);
  auto client = ClipClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->GetModelInfo().ok());  // then the connection stays idle
  ASSERT_TRUE(testing::PollUntil([&] { return (*proxy)->pings_from_client() >= 5; },
                                 absl::Seconds(20)))
      << "client pings: " << (*proxy)->pings_from_client();
  EXPECT_EQ((*proxy)->closed(), 0);
  (*proxy)->BlackHole();
  CallOptions once;
  once.retry = false;  // a retry would go into the black hole too
  once.timeout = absl::Seconds(60);
  EXPECT_EQ((*client)->GetModelInfo(once).status().code(),
            absl::StatusCode::kUnavailable);
  // The client has closed its socket; the proxy's thread sees that a moment later.
  EXPECT_TRUE(
      testing::PollUntil([&] { return (*proxy)->closed() >= 1; }, absl::Seconds(10)))
      << "connections closed: " << (*proxy)->closed();
}

TEST(ClipClientTest, RetriesResourceExhaustedHonouringRetryInfo) {
  FakeServer fake;
  fake.service.refuse_first_unary = 2;
  std::vector<absl::Duration> sleeps;
  auto client = Connect(fake.target(), &sleeps);
  auto response = client->EmbedImages(Images({"abc"}));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->embeddings(0).values(0), 3.0f);
  EXPECT_EQ(fake.service.embed_image_calls, 3);
  EXPECT_EQ(sleeps, (std::vector<absl::Duration>{absl::Milliseconds(30),
                                                 absl::Milliseconds(30)}));
}

// The client never cancels a unary call itself: a CANCELLED is the server's (a drain
// that caught the request mid-upload), and the call is retried like UNAVAILABLE.
TEST(ClipClientTest, AUnaryCallTheServerCancelledIsRetried) {
  FakeServer fake;
  fake.service.cancel_first_unary = 1;
  auto client = Connect(fake.target());
  auto response = client->EmbedImages(Images({"abc"}));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(fake.service.embed_image_calls, 2);

  fake.service.embed_image_calls = 0;
  CallOptions once;
  once.retry = false;
  const absl::Status status = client->EmbedImages(Images({"abc"}), once).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("the server cancelled the call: CANCELLED"));
}

TEST(ClipClientTest, EveryAttemptOfACallSendsItsOneRequestId) {
  FakeServer fake;
  fake.service.refuse_first_unary = 2;
  auto client = Connect(fake.target());
  ASSERT_TRUE(client->EmbedImages(Images({"abc"})).ok());  // three attempts
  ASSERT_TRUE(client->EmbedImages(Images({"abc"})).ok());
  CallOptions call;
  call.request_id = "job-9/item-3";
  ASSERT_TRUE(client->EmbedImages(Images({"abc"}), call).ok());
  const std::vector<std::string> ids = fake.service.request_ids();
  ASSERT_EQ(ids.size(), 5u);
  EXPECT_THAT(ids[0], MatchesRegex("[0-9a-f]{16}"));
  EXPECT_EQ(ids[1], ids[0]);
  EXPECT_EQ(ids[2], ids[0]);
  EXPECT_THAT(ids[3], MatchesRegex("[0-9a-f]{16}"));
  EXPECT_NE(ids[3], ids[0]);
  EXPECT_EQ(ids[4], "job-9/item-3");

  call.request_id = "two words";
  EXPECT_EQ(client->EmbedImages(Images({"abc"}), call).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fake.service.request_ids().size(), 5u);  // refused before sending
}

// The error of a call names the id the server saw, to find its log line.
TEST(ClipClientTest, AFailedCallsErrorCarriesItsRequestId) {
  FakeServer fake;
  auto client = Connect(fake.target());
  auto made_up = client->EmbedImages(Images({"bad"}));
  ASSERT_EQ(made_up.status().code(), absl::StatusCode::kInvalidArgument);
  CallOptions call;
  call.request_id = "job-9/item-3";
  auto given = client->EmbedImages(Images({"bad"}), call);
  ASSERT_EQ(given.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RequestIdOf(given.status()), "job-9/item-3");
  const std::vector<std::string> ids = fake.service.request_ids();
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(RequestIdOf(made_up.status()), ids[0]);
  // Details survive next to it.
  EXPECT_TRUE(BadRequestOf(given.status()).has_value());
  // Not on success.
  EXPECT_TRUE(client->EmbedImages(Images({"abc"}), call).ok());
}

TEST(ClipClientTest, AMessageOverTheServersLimitIsNotRetried) {
  FakeServer fake("fake", /*max_receive_message_bytes=*/1024);
  std::vector<absl::Duration> sleeps;
  auto client = Connect(fake.target(), &sleeps);
  auto response = client->EmbedImages(Images({std::string(4096, 'x')}));
  // gRPC refuses it before the handler, with no RetryInfo: the same every time.
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(sleeps.empty());
  EXPECT_EQ(fake.service.embed_image_calls, 0);
}

TEST(ClipClientTest, NoRetryWhenTheCallSaysSo) {
  FakeServer fake;
  fake.service.refuse_first_unary = 1;
  auto client = Connect(fake.target());
  CallOptions call;
  call.retry = false;
  auto response = client->EmbedImages(Images({"abc"}), call);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RetryInfoDelay(response.status()), absl::Milliseconds(30));
  EXPECT_EQ(fake.service.embed_image_calls, 1);
}

TEST(ClipClientTest, InvalidArgumentCarriesBadRequestAndIsNotRetried) {
  FakeServer fake;
  auto client = Connect(fake.target());
  auto response = client->EmbedImages(Images({"ok", "ok", "bad"}));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(response.status().message(), "images[2]: not an image");
  EXPECT_EQ(BadRequestItemIndex(response.status(), "images"), 2u);
  EXPECT_EQ(fake.service.embed_image_calls, 1);
}

TEST(ClipClientTest, UnimplementedMethodsAreUnimplemented) {
  FakeServer fake;
  auto client = Connect(fake.target());
  EXPECT_EQ(client->Tokenize(v1::TokenizeRequest()).status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST(ClipClientTest, NoServerIsUnavailableAfterBoundedRetries) {
  const int port = JustFreedPort();
  std::vector<absl::Duration> sleeps;
  auto client = Connect(absl::StrCat("127.0.0.1:", port), &sleeps);
  const absl::Time start = absl::Now();
  auto info = client->GetModelInfo();
  EXPECT_EQ(info.status().code(), absl::StatusCode::kUnavailable) << info.status();
  EXPECT_EQ(sleeps.size(), 3u) << "4 attempts by default";
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

// A server that starts listening while a call is being retried is reached by the
// retries: gRPC's own reconnect backoff (1 s by default) would otherwise fail them
// at once, without trying to connect.
TEST(ClipClientTest, RetriesReachAServerThatStartsListeningMeanwhile) {
  const int port = JustFreedPort();
  ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port);
  options.deadline = absl::Seconds(10);
  // The server starts once the first attempt has failed. Real time: the reconnect
  // backoff is gRPC's. The retries come 80, 240 and 560 ms after the first attempt
  // (the least jitter); gRPC tries to connect about 100 and 260 ms after it
  // (+-20%), and by default first after 1 s.
  std::optional<FakeServer> late;
  int retries = 0;
  options.retry_environment.sleep = [&](absl::Duration d) {
    if (retries++ == 0) late.emplace("late", -1, false, port);
    absl::SleepFor(d);
  };
  options.retry_environment.uniform = [] { return 0.0; };
  auto client = ClipClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::StatusOr<v1::ModelInfo> info = (*client)->GetModelInfo();
  ASSERT_TRUE(late.has_value());
  ASSERT_EQ(late->port, port);
  ASSERT_TRUE(info.ok()) << info.status() << " after " << retries << " retries";
  EXPECT_EQ(info->name(), "late");
}

// A gRPC server in another process that starts listening on `port` `delay_s` seconds
// after it is spawned and answers GetModelInfo with the name "late" (Python's grpcio,
// which the tests' dependencies include). Killed when destroyed.
class LateServerProcess {
 public:
  LateServerProcess(int port, double delay_s) {
    static constexpr char kScript[] = R"(
import sys, time
from concurrent import futures
import grpc
port, delay = int(sys.argv[1]), float(sys.argv[2])
time.sleep(delay)
info = grpc.unary_unary_rpc_method_handler(lambda request, context: b"\n\x04late")
server = grpc.server(futures.ThreadPoolExecutor(2))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "clipserve.v1.ClipService", {"GetModelInfo": info}),))
server.add_insecure_port("127.0.0.1:%d" % port)
server.start()
server.wait_for_termination(30)
)";
    const std::string port_arg = std::to_string(port);
    const std::string delay_arg = std::to_string(delay_s);
    const char* argv[] = {"/usr/bin/python3", "-c",   kScript, port_arg.c_str(),
                          delay_arg.c_str(),  nullptr};
    spawned_ = posix_spawn(&pid_, argv[0], nullptr, nullptr, const_cast<char**>(argv),
                           environ) == 0;
  }
  ~LateServerProcess() {
    if (!spawned_) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  bool spawned() const { return spawned_; }

 private:
  pid_t pid_ = -1;
  bool spawned_ = false;
};

// The same with the server in another process, as in real use: no gRPC thread of the
// client's process then happens to poll its connection attempts, so only waiting on
// the channel between retries lets a retry find the server.
TEST(ClipClientTest, RetriesReachAServerInAnotherProcessThatStartsMeanwhile) {
  if (std::system("/usr/bin/python3 -c 'import grpc' 2>/dev/null") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 has no grpc module (python3-grpcio)";
  }
  const int port = JustFreedPort();
  ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port);
  options.deadline = absl::Seconds(20);
  // Attempts at about 0, 0.1, 0.3, 0.7, 1.5, 3.1 and 6.3 s; the server listens after
  // half a second and its interpreter's start.
  options.retry.max_attempts = 7;
  options.retry_environment.uniform = [] { return 0.5; };
  auto client = ClipClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Time start = absl::Now();
  LateServerProcess late(port, 0.5);
  ASSERT_TRUE(late.spawned());
  const absl::StatusOr<v1::ModelInfo> info = (*client)->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status() << " after " << absl::Now() - start;
  EXPECT_EQ(info->name(), "late");
  // It was retried: the server was not there for the first attempt.
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(500));
}

// Replies that do not fit their request fail the call (reply_check_test.cc has the
// checks themselves): a dropped item would shift every later row onto the wrong input.
TEST(ClipClientTest, RepliesThatDoNotFitTheRequestFail) {
  FakeServer server;
  auto client = Connect(server.target());
  v1::EmbedTextRequest request;
  request.add_texts("a");
  request.add_texts("unanswered");
  request.add_texts("c");
  const auto dropped = client->EmbedTexts(request);
  EXPECT_EQ(dropped.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(dropped.status().message(), HasSubstr("2 embeddings for 3 inputs"));
  EXPECT_TRUE(RequestIdOf(dropped.status()).has_value());

  // A stream item wider than the others fails alone, as it arrives.
  const std::vector<std::string> texts = {"a", "wide", "b"};
  EmbedStreamOptions options;
  options.stop_on_error = false;
  auto results = client->EmbedStream(
      texts.size(), [&](size_t i) { return EmbedItem::Text(texts[i]); }, options);
  ASSERT_TRUE(results.ok()) << results.status();
  EXPECT_TRUE((*results)[0].ok());
  EXPECT_EQ((*results)[1].status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT((*results)[1].status().message(),
              HasSubstr("an embedding of 3 floats among ones of 2"));
  EXPECT_TRUE((*results)[2].ok());
}

TEST(ClipClientTest, RoundRobinSpreadsCallsOverEveryEndpoint) {
  FakeServer a("a"), b("b");
  auto client = Connect(absl::StrCat(a.target(), ",", b.target()));
  EXPECT_EQ(client->channel_target(), absl::StrCat("ipv4:", a.target(), ",", b.target()));
  int from_a = 0, from_b = 0;
  for (int i = 0; i < 20; ++i) {
    auto info = client->GetModelInfo();
    ASSERT_TRUE(info.ok()) << info.status();
    (info->name() == "a" ? from_a : from_b)++;
  }
  EXPECT_GT(from_a, 0);
  EXPECT_GT(from_b, 0);
}

std::vector<EmbedItem> Texts(const std::vector<std::string>& texts) {
  std::vector<EmbedItem> items;
  for (const std::string& t : texts) items.push_back(EmbedItem::Text(t));
  return items;
}

TEST(EmbedStreamTest, ResultsInInputOrderWithPerItemErrors) {
  FakeServer fake;
  auto client = Connect(fake.target());
  std::vector<std::string> texts;
  for (int i = 0; i < 20; ++i)
    texts.push_back(std::string(static_cast<size_t>(i), 'a' + i % 26));
  texts[7] = "bad one";
  EmbedStreamOptions options;
  options.max_in_flight = 3;
  std::vector<size_t> progress;
  options.on_progress = [&progress](size_t done, size_t total) {
    EXPECT_EQ(total, 20u);
    progress.push_back(done);
  };
  auto results = client->EmbedStream(Texts(texts), options);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 20u);
  for (size_t i = 0; i < texts.size(); ++i) {
    if (i == 7) {
      EXPECT_EQ((*results)[i].status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_TRUE(BadRequestOf((*results)[i].status()).has_value());
      continue;
    }
    ASSERT_TRUE((*results)[i].ok()) << i << ": " << (*results)[i].status();
    EXPECT_EQ((*results)[i]->embedding[0], static_cast<float>(texts[i].size())) << i;
    EXPECT_EQ((*results)[i]->num_tokens, texts[i].size());
  }
  ASSERT_EQ(progress.size(), 20u);
  EXPECT_EQ(progress.back(), 20u);
  EXPECT_TRUE(std::is_sorted(progress.begin(), progress.end()));
}

TEST(EmbedStreamTest, LoaderErrorsFailOnlyTheirItem) {
  FakeServer fake;
  auto client = Connect(fake.target());
  auto results = client->EmbedStream(
      5,
      [](size_t i) -> absl::StatusOr<EmbedItem> {
        if (i == 3) return absl::NotFoundError("x3.jpg: No such file or directory");
        return EmbedItem::Text(std::string(i + 1, 'x'));
      },
      {});
  ASSERT_TRUE(results.ok());
  EXPECT_EQ((*results)[3].status(),
            absl::NotFoundError("x3.jpg: No such file or directory"));
  for (size_t i : {0, 1, 2, 4}) {
    ASSERT_TRUE((*results)[i].ok()) << (*results)[i].status();
    EXPECT_EQ((*results)[i]->embedding[0], static_cast<float>(i + 1));
  }
}

TEST(EmbedStreamTest, RefusedItemsAreRetriedOnANewStream) {
  FakeServer fake;
  std::vector<absl::Duration> sleeps;
  auto client = Connect(fake.target(), &sleeps);
  auto results = client->EmbedStream(Texts({"one", "busy two", "three", "busy four"}));
  ASSERT_TRUE(results.ok());
  for (const auto& result : *results) EXPECT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(fake.service.stream_calls, 2);
  EXPECT_EQ(sleeps, std::vector<absl::Duration>{absl::Milliseconds(20)});
}

TEST(EmbedStreamTest, ABrokenStreamResumesWithTheUnansweredItems) {
  FakeServer fake;
  fake.service.break_first_stream_after = 2;
  auto client = Connect(fake.target());
  std::vector<std::string> texts;
  for (int i = 1; i <= 10; ++i) texts.push_back(std::string(static_cast<size_t>(i), 'z'));
  EmbedStreamOptions options;
  options.max_in_flight = 3;
  auto results = client->EmbedStream(Texts(texts), options);
  ASSERT_TRUE(results.ok());
  for (size_t i = 0; i < texts.size(); ++i) {
    ASSERT_TRUE((*results)[i].ok()) << i << ": " << (*results)[i].status();
    EXPECT_EQ((*results)[i]->embedding[0], static_cast<float>(i + 1));
  }
  EXPECT_EQ(fake.service.stream_calls, 2);
}

TEST(EmbedStreamTest, EveryStreamOfAJobSendsItsOneRequestId) {
  FakeServer fake;
  fake.service.break_first_stream_after = 1;
  auto client = Connect(fake.target());
  EmbedStreamOptions options;
  options.request_id = "bulk-1";
  ASSERT_TRUE(client->EmbedStream(Texts({"a", "b", "c", "d"}), options).ok());
  EXPECT_EQ(fake.service.request_ids(), (std::vector<std::string>{"bulk-1", "bulk-1"}));
  options.request_id = std::string(129, 'x');
  EXPECT_EQ(client->EmbedStream(Texts({"a"}), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Items the server failed or left unanswered carry the job's request id; an item the
// loader failed was never sent and carries none.
TEST(EmbedStreamTest, ItemsTheServerFailedCarryTheJobsRequestId) {
  FakeServer fake;
  fake.service.break_first_stream_after = 2;
  auto client = Connect(fake.target());
  EmbedStreamOptions options;
  options.max_in_flight = 3;
  options.retry = false;
  options.request_id = "bulk-2";
  const std::vector<std::string> texts = {"a", "missing", "bad", "dddd", "eeeee"};
  auto results = client->EmbedStream(
      texts.size(),
      [&texts](size_t i) -> absl::StatusOr<EmbedItem> {
        if (i == 1) return absl::NotFoundError("missing.txt: No such file or directory");
        return EmbedItem::Text(texts[i]);
      },
      options);
  ASSERT_TRUE(results.ok());
  int bad = 0, unavailable = 0, missing = 0;
  for (const auto& result : *results) {
    if (result.ok()) continue;
    switch (result.status().code()) {
      case absl::StatusCode::kInvalidArgument:
        ++bad;
        EXPECT_EQ(RequestIdOf(result.status()), "bulk-2");
        break;
      case absl::StatusCode::kUnavailable:
        ++unavailable;
        EXPECT_EQ(RequestIdOf(result.status()), "bulk-2");
        break;
      default:
        ++missing;
        EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound);
        EXPECT_FALSE(RequestIdOf(result.status()).has_value());
    }
  }
  // The fake reads "a", "bad" and "dddd", answers the last two and breaks the stream.
  EXPECT_EQ(bad, 1);
  EXPECT_EQ(unavailable, 2);
  EXPECT_EQ(missing, 1);
}

TEST(EmbedStreamTest, WithoutRetriesABrokenStreamFailsTheRest) {
  FakeServer fake;
  fake.service.break_first_stream_after = 2;
  auto client = Connect(fake.target());
  EmbedStreamOptions options;
  options.max_in_flight = 3;
  options.retry = false;
  auto results = client->EmbedStream(Texts({"a", "bb", "ccc", "dddd", "eeeee"}), options);
  ASSERT_TRUE(results.ok());
  int ok = 0, unavailable = 0;
  for (const auto& result : *results) {
    if (result.ok()) ++ok;
    if (result.status().code() == absl::StatusCode::kUnavailable) ++unavailable;
  }
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(unavailable, 3);
}

TEST(EmbedStreamTest, StopOnErrorCancelsTheRest) {
  FakeServer fake;
  auto client = Connect(fake.target());
  std::vector<std::string> texts(60, "fine");
  texts[1] = "bad";
  EmbedStreamOptions options;
  options.max_in_flight = 3;
  options.stop_on_error = true;
  auto results = client->EmbedStream(Texts(texts), options);
  ASSERT_TRUE(results.ok());
  EXPECT_EQ((*results)[1].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(IsNotProcessed(results->back().status())) << results->back().status();
  EXPECT_LT(std::count_if(results->begin(), results->end(),
                          [](const auto& r) { return r.ok(); }),
            10);
}

// An answer without a result is an error too: with stop_on_error it cancels the
// stream, and an item the server is still working on fails as not processed rather
// than being waited for.
TEST(EmbedStreamTest, StopOnErrorCancelsTheRestAfterAnAnswerWithoutAResult) {
  FakeServer fake;
  fake.service.stream_batch = 1;
  auto client = Connect(fake.target());
  EmbedStreamOptions options;
  options.stop_on_error = true;
  options.stall_timeout = absl::Seconds(20);
  const absl::Time start = absl::Now();
  auto results = client->EmbedStream(Texts({"a", "no result", "hang", "d"}), options);
  ASSERT_TRUE(results.ok()) << results.status();
  EXPECT_TRUE((*results)[0].ok());
  EXPECT_EQ((*results)[1].status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string((*results)[1].status().message()),
              HasSubstr("without a result"));
  EXPECT_TRUE(IsNotProcessed((*results)[2].status())) << (*results)[2].status();
  EXPECT_TRUE(IsNotProcessed((*results)[3].status())) << (*results)[3].status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "waited for the stall timeout";
}

TEST(EmbedStreamTest, StalledStreamEndsWithDeadlineExceeded) {
  FakeServer fake;
  fake.service.stream_batch = 1;
  auto client = Connect(fake.target());
  EmbedStreamOptions options;
  options.stall_timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  auto results = client->EmbedStream(Texts({"a", "hang", "c"}), options);
  ASSERT_TRUE(results.ok());
  EXPECT_TRUE((*results)[0].ok());
  EXPECT_EQ((*results)[1].status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

// Opening a stream waits for the connection: to a peer that accepts TCP but never
// speaks HTTP/2 (a stopped server), gRPC's connect timeout of 20 s, then UNAVAILABLE,
// as it was. The stall timeout bounds that wait too.
TEST(EmbedStreamTest, AStreamThatCannotOpenStallsLikeOneThatGetsNoAnswer) {
  FakeServer fake;
  auto proxy = testing::TcpProxy::Start(fake.port);
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  (*proxy)->BlackHole();
  auto client = Connect(absl::StrCat("127.0.0.1:", (*proxy)->port()));
  EmbedStreamOptions options;
  options.stall_timeout = absl::Milliseconds(300);
  auto results = client->EmbedStream(Texts({"a", "b"}), options);
  ASSERT_TRUE(results.ok()) << results.status();
  for (const auto& result : *results) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded)
        << result.status();
    EXPECT_THAT(std::string(result.status().message()),
                HasSubstr("the server did not accept the stream within 300ms"));
  }
  EXPECT_GE((*proxy)->accepted(), 1);
}

// The watchdog runs on ClientOptions::stall_clock (RealClock, monotonic, by default):
// here a FakeClock that only the test moves, by far more than the stall timeout, once
// "a" is answered and "hang" is in flight. On the wall clock (absl::Now()), as it was,
// the watchdog ignores the fake clock and the pass ends at its 30 s deadline instead.
TEST(EmbedStreamTest, TheStallWatchdogRunsOnTheClientsClock) {
  FakeServer fake;
  fake.service.stream_batch = 1;
  FakeClock clock;
  ClientOptions client_options;
  client_options.target = fake.target();
  client_options.stall_clock = &clock;
  auto client = ClipClient::Create(client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  EmbedStreamOptions options;
  options.stall_timeout = absl::Hours(1);
  options.timeout = absl::Seconds(30);
  std::atomic<size_t> settled{0};
  options.on_progress = [&settled](size_t done, size_t) { settled = done; };
  absl::StatusOr<std::vector<absl::StatusOr<EmbeddedItem>>> results;
  absl::Notification done;
  std::thread stream([&] {
    results = (*client)->EmbedStream(Texts({"a", "hang"}), options);
    done.Notify();
  });
  // Time moves only after the client has settled "a" (before that, a stall would
  // fail it too) and while the server holds "hang"; in steps, until the stream ends.
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (!done.HasBeenNotified() && absl::Now() < give_up) {
    if (settled >= 1 && fake.service.hanging > 0) clock.AdvanceTime(absl::Hours(1));
    absl::SleepFor(absl::Milliseconds(5));
  }
  stream.join();
  ASSERT_TRUE(results.ok()) << results.status();
  EXPECT_TRUE((*results)[0].ok());
  EXPECT_EQ((*results)[1].status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string((*results)[1].status().message()),
              HasSubstr("no answer from the server for 1h"));
}

TEST(EmbedStreamTest, RejectsBadOptions) {
  FakeServer fake;
  auto client = Connect(fake.target());
  EmbedStreamOptions options;
  options.max_in_flight = 0;
  EXPECT_EQ(client->EmbedStream(Texts({"a"}), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(client->EmbedStream(Texts({}), {}).value().empty());
}

TEST(BenchTest, CountsAddUpAgainstAFakeServer) {
  FakeServer fake;
  auto client = Connect(fake.target());
  BenchOptions options;
  options.modality = BenchModality::kImage;
  options.concurrency = 3;
  options.requests = 20;
  options.items_per_request = 2;
  options.inputs = {"jpeg-1", "jpeg-22"};
  std::atomic<int64_t> progress_calls{0};
  options.on_progress = [&](int64_t, double fraction) {
    ++progress_calls;
    EXPECT_LE(fraction, 1.0);
  };
  auto result = RunBench(*client, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->requests, 20);
  EXPECT_EQ(result->items, 40);
  EXPECT_EQ(result->succeeded, 20);
  EXPECT_TRUE(result->errors.empty());
  EXPECT_EQ(fake.service.embed_image_calls, 20);
  EXPECT_EQ(progress_calls, 20);
  EXPECT_LE(result->latency_ms.p50, result->latency_ms.p90);
  EXPECT_LE(result->latency_ms.p90, result->latency_ms.p99);
  EXPECT_LE(result->latency_ms.p99, result->latency_ms.max);
}

TEST(BenchTest, RefusesConcurrencyAndDurationOutOfRange) {
  FakeServer fake;
  auto client = Connect(fake.target());
  BenchOptions options;
  options.inputs = {"x"};
  options.requests = 1;
  for (int concurrency : {0, kMaxBenchConcurrency + 1}) {
    options.concurrency = concurrency;
    EXPECT_EQ(RunBench(*client, options).status().code(),
              absl::StatusCode::kInvalidArgument)
        << concurrency;
  }
  options.concurrency = 1;
  options.requests = 0;
  options.duration = kMaxBenchDuration + absl::Seconds(1);
  EXPECT_EQ(RunBench(*client, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fake.service.embed_image_calls, 0);
}

// --unique_texts: no text is sent twice, each is its input with three words appended;
// a plain text bench sends its inputs as they are.
TEST(BenchTest, UniqueTextsNeverRepeat) {
  for (const bool unique : {false, true}) {
    FakeServer fake;
    auto client = Connect(fake.target());
    BenchOptions options;
    options.modality = BenchModality::kText;
    options.concurrency = 3;
    options.requests = 10;
    options.items_per_request = 2;
    options.inputs = {"a cat", "a dog"};
    options.unique_texts = unique;
    auto result = RunBench(*client, options);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->succeeded, 10);
    EXPECT_EQ(BenchJson(*result, options)["unique_texts"], unique);
    std::vector<std::string> texts = fake.service.texts();
    ASSERT_EQ(texts.size(), 20u);
    for (const std::string& text : texts) {
      EXPECT_THAT(text, unique
                            ? ::testing::MatchesRegex("a (cat|dog) [a-z]+ [a-z]+ [a-z]+")
                            : ::testing::MatchesRegex("a (cat|dog)"));
    }
    std::sort(texts.begin(), texts.end());
    const size_t distinct = std::unique(texts.begin(), texts.end()) - texts.begin();
    EXPECT_EQ(distinct, unique ? 20u : 2u);
  }
}

// Every line of --texts_file is sent, round-robin, however many there are.
TEST(BenchTest, TextRequestsGoThroughEveryInput) {
  for (const int per_request : {1, 3}) {
    FakeServer fake;
    auto client = Connect(fake.target());
    BenchOptions options;
    options.modality = BenchModality::kText;
    options.concurrency = 2;
    options.items_per_request = per_request;
    for (int i = 0; i < 100; ++i) options.inputs.push_back(absl::StrCat("caption ", i));
    options.requests = 100;
    auto result = RunBench(*client, options);
    ASSERT_TRUE(result.ok()) << result.status();
    std::map<std::string, int> sent;
    for (const std::string& text : fake.service.texts()) ++sent[text];
    ASSERT_EQ(sent.size(), 100u) << per_request;
    for (const auto& [text, count] : sent) EXPECT_EQ(count, per_request) << text;
  }
}

// A server lost mid-run ends the run (its callers would spin through instant
// failures until the end), with the reason, and what came before is kept.
TEST(BenchTest, AServerLostMidRunStopsTheRun) {
  FakeServer fake;
  fake.service.unavailable_after = 5;
  auto client = Connect(fake.target());
  BenchOptions options;
  options.concurrency = 1;
  options.inputs = {"x"};
  options.duration = absl::Hours(1);
  options.give_up_after = absl::Milliseconds(200);
  const absl::Time start = absl::Now();
  auto result = RunBench(*client, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_LT(absl::Now() - start, absl::Minutes(1));
  EXPECT_EQ(result->succeeded, 5);
  EXPECT_GT(result->errors.at("UNAVAILABLE"), 0);
  EXPECT_THAT(result->stopped_early,
              ::testing::HasSubstr("was UNAVAILABLE (the server went away)"));
  EXPECT_THAT(BenchText(*result, options), ::testing::HasSubstr("stopped:    early"));
  EXPECT_EQ(BenchJson(*result, options)["stopped_early"], result->stopped_early);
}

TEST(BenchTest, UniqueTextsAreRefusedForImages) {
  FakeServer fake;
  auto client = Connect(fake.target());
  BenchOptions options;
  options.requests = 1;
  options.inputs = {"x"};
  options.unique_texts = true;
  EXPECT_EQ(RunBench(*client, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fake.service.embed_image_calls, 0);
}

// Against no server, the bench fails at once instead of counting an hour of
// immediate UNAVAILABLEs.
TEST(BenchTest, AServerThatCannotBeReachedFailsAtOnce) {
  auto client = Connect(absl::StrCat("127.0.0.1:", JustFreedPort()));
  BenchOptions options;
  options.inputs = {"x"};
  options.duration = absl::Hours(1);
  const absl::Time start = absl::Now();
  EXPECT_EQ(RunBench(*client, options).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Minutes(1));
}

TEST(BenchTest, ErrorsAreCountedByCodeAndNotRetried) {
  FakeServer fake;
  fake.service.refuse_first_unary = 5;
  auto client = Connect(fake.target());
  BenchOptions options;
  options.concurrency = 1;
  options.requests = 8;
  options.inputs = {"x"};
  auto result = RunBench(*client, options);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->requests, 8);
  EXPECT_EQ(result->succeeded, 3);
  EXPECT_EQ(result->errors.at("RESOURCE_EXHAUSTED"), 5);
}

}  // namespace
}  // namespace clipserve
