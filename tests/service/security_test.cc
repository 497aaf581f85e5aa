// TLS, mutual TLS and bearer tokens end to end: a real ClipServer hosting ClipService
// over a FakeEngine on loopback, called through ClipClient and raw stubs, with
// certificates made at test time (tests/testing/test_certs.h). Every check is made
// both ways: the right credentials are accepted, missing or wrong ones refused.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/clip_client.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/service/bearer_auth.h"
#include "server/service/clip_server.h"
#include "server/service/clip_service.h"
#include "server/service/server_credentials.h"
#include "tests/service/fake_engine.h"
#include "tests/testing/test_certs.h"

namespace clipserve {
namespace {

using ::grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "first-token-0123456789abcdef";
constexpr char kOtherToken[] = "2nd";

CallOptions Once() {
  CallOptions call;
  call.timeout = absl::Seconds(10);
  call.retry = false;
  return call;
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { pki_ = new testing::TestPki(testing::MakeTestPki()); }
  static void TearDownTestSuite() { delete pki_; }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(5));
    server_.reset();
    engine_.reset();
  }

  static ServerTlsConfig Tls() {
    return {pki_->server.cert_pem, pki_->server.key_pem, ""};
  }
  static ServerTlsConfig MutualTls() {
    return {pki_->server.cert_pem, pki_->server.key_pem, pki_->ca.cert_pem};
  }

  void Start(std::optional<ServerTlsConfig> tls, std::vector<std::string> tokens = {}) {
    engine_ = std::make_unique<FakeEngine>(FakeEngine::DefaultDescription());
    ClipServiceOptions service_options;
    if (!tokens.empty()) {
      auto authenticator = BearerAuthenticator::Create(tokens);
      ASSERT_TRUE(authenticator.ok()) << authenticator.status();
      service_options.authenticator = *std::move(authenticator);
    }
    auto service = ClipService::Create(engine_.get(), service_options);
    ASSERT_TRUE(service.ok()) << service.status();
    std::vector<std::unique_ptr<grpc::Service>> services;
    services.push_back(*std::move(service));
    ClipServerOptions options;
    options.host = "127.0.0.1";
    options.port = 0;
    options.tls = std::move(tls);
    auto server = ClipServer::Create(options, std::move(services));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::string Target() const { return absl::StrCat("127.0.0.1:", server_->port()); }

  // A client of the server; `tls_roots` non-empty turns TLS on.
  std::unique_ptr<ClipClient> Client(const std::string& tls_roots,
                                     const testing::TestCert* client_cert = nullptr,
                                     const std::string& token = "") const {
    ClientOptions options;
    options.target = Target();
    options.deadline = absl::Seconds(10);
    if (!tls_roots.empty()) {
      options.tls.enabled = true;
      options.tls.root_certificates_pem = tls_roots;
      if (client_cert != nullptr) {
        options.tls.cert_chain_pem = client_cert->cert_pem;
        options.tls.private_key_pem = client_cert->key_pem;
      }
    }
    options.bearer_token = token;
    auto client = ClipClient::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  static absl::Status Info(ClipClient& client) {
    return client.GetModelInfo(Once()).status();
  }

  static absl::Status Health(ClipClient& client) {
    auto health = client.CheckHealth("", Once());
    if (!health.ok()) return health.status();
    if (*health != HealthCheckResponse::SERVING) return absl::UnknownError("not SERVING");
    return absl::OkStatus();
  }

  static testing::TestPki* pki_;
  std::unique_ptr<FakeEngine> engine_;
  std::unique_ptr<ClipServer> server_;
};

testing::TestPki* SecurityTest::pki_ = nullptr;

// --- TLS

TEST_F(SecurityTest, TlsWithTheRightCaWorks) {
  Start(Tls());
  auto client = Client(pki_->ca.cert_pem);
  EXPECT_TRUE(Info(*client).ok()) << Info(*client);
  EXPECT_TRUE(Health(*client).ok());
  v1::EmbedTextRequest request;
  request.add_texts("a cat");
  auto texts = client->EmbedTexts(request, Once());
  ASSERT_TRUE(texts.ok()) << texts.status();
  EXPECT_EQ(texts->embeddings_size(), 1);
}

TEST_F(SecurityTest, TlsChecksTheServerNameAgainstTheCertificate) {
  Start(Tls());
  ClientOptions options;
  options.target = Target();
  options.tls.enabled = true;
  options.tls.root_certificates_pem = pki_->ca.cert_pem;
  options.tls.server_name_override = "localhost";  // a DNS name of the certificate
  EXPECT_TRUE(Info(**ClipClient::Create(options)).ok());
  options.tls.server_name_override = "not-the-server.example";
  EXPECT_EQ(Info(**ClipClient::Create(options)).code(), absl::StatusCode::kUnavailable);
}

TEST_F(SecurityTest, TlsWithAnotherCaIsRefused) {
  Start(Tls());
  auto client = Client(pki_->other_ca.cert_pem);
  EXPECT_EQ(Info(*client).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Health(*client).code(), absl::StatusCode::kUnavailable);
}

TEST_F(SecurityTest, PlaintextAndTlsDoNotMix) {
  Start(Tls());
  EXPECT_EQ(Info(*Client("")).code(), absl::StatusCode::kUnavailable);
  server_->Shutdown(absl::Seconds(1));
  Start(std::nullopt);
  EXPECT_EQ(Info(*Client(pki_->ca.cert_pem)).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(Info(*Client("")).ok());
}

TEST_F(SecurityTest, ServerRefusesTlsMaterialThatDoesNotFit) {
  ClipServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.tls = ServerTlsConfig{pki_->server.cert_pem, pki_->client.key_pem, ""};
  auto server = ClipServer::Create(options, {});
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("does not match"));
}

// --- Mutual TLS

TEST_F(SecurityTest, MutualTlsAcceptsAClientCertificateFromTheCa) {
  Start(MutualTls());
  auto client = Client(pki_->ca.cert_pem, &pki_->client);
  EXPECT_TRUE(Info(*client).ok()) << Info(*client);
  std::vector<EmbedItem> items = {EmbedItem::Text("a"), EmbedItem::Text("b")};
  auto results = client->EmbedStream(items);
  ASSERT_TRUE(results.ok()) << results.status();
  for (const auto& result : *results) EXPECT_TRUE(result.ok()) << result.status();
}

TEST_F(SecurityTest, MutualTlsRefusesAClientWithoutCertificate) {
  Start(MutualTls());
  auto client = Client(pki_->ca.cert_pem);
  EXPECT_EQ(Info(*client).code(), absl::StatusCode::kUnavailable);
  // The handshake fails before any service is chosen: health needs a certificate too.
  EXPECT_EQ(Health(*client).code(), absl::StatusCode::kUnavailable);
}

TEST_F(SecurityTest, MutualTlsRefusesACertificateFromAnotherCa) {
  Start(MutualTls());
  auto client = Client(pki_->ca.cert_pem, &pki_->other_client);
  EXPECT_EQ(Info(*client).code(), absl::StatusCode::kUnavailable);
}

// --- Bearer tokens

TEST_F(SecurityTest, TokenMissingOrWrongIsUnauthenticatedRightIsOk) {
  Start(std::nullopt, {kToken, kOtherToken});
  const absl::Status missing = Info(*Client(""));
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(missing.message()), HasSubstr("missing bearer token"));

  for (const std::string& wrong : {std::string("wrong-guess"), std::string(kToken) + "x",
                                   std::string("2n"), std::string(kToken).substr(1)}) {
    const absl::Status status = Info(*Client("", nullptr, wrong));
    EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << wrong;
    EXPECT_THAT(std::string(status.message()), Not(HasSubstr(wrong)));
  }

  EXPECT_TRUE(Info(*Client("", nullptr, kToken)).ok());
  EXPECT_TRUE(Info(*Client("", nullptr, kOtherToken)).ok());
  // Streams carry the token too.
  auto results = Client("", nullptr, kOtherToken)->EmbedStream({EmbedItem::Text("a")});
  ASSERT_TRUE(results.ok());
  EXPECT_TRUE((*results)[0].ok()) << (*results)[0].status();
  auto refused = Client("", nullptr, "nope")->EmbedStream({EmbedItem::Text("a")});
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ((*refused)[0].status().code(), absl::StatusCode::kUnauthenticated);
}

// The longest token a token file may hold works end to end: it and the other headers
// of a call fit in the 8 KiB gRPC accepts (a token 1.7 KiB longer did not).
TEST_F(SecurityTest, TheLongestTokenAllowedIsAccepted) {
  const std::string longest(kMaxBearerTokenBytes, 'k');
  Start(std::nullopt, {longest});
  EXPECT_TRUE(Info(*Client("", nullptr, longest)).ok());
  auto results = Client("", nullptr, longest)->EmbedStream({EmbedItem::Text("a")});
  ASSERT_TRUE(results.ok()) << results.status();
  EXPECT_TRUE((*results)[0].ok()) << (*results)[0].status();
}

TEST_F(SecurityTest, HealthNeedsNoToken) {
  Start(std::nullopt, {kToken});
  EXPECT_TRUE(Health(*Client("")).ok());
  EXPECT_TRUE(Health(*Client("", nullptr, "wrong")).ok());
}

// Every method of clipserve.v1.ClipService, as listed by its descriptor, refuses a
// call without a token before the engine sees anything, and lets one with the token
// through: a new RPC that forgets the check fails here.
TEST_F(SecurityTest, EveryClipServiceMethodChecksTheToken) {
  Start(std::nullopt, {kToken});
  auto stub = v1::ClipService::NewStub(
      grpc::CreateChannel(Target(), grpc::InsecureChannelCredentials()));
  using Caller = std::function<grpc::Status(grpc::ClientContext*)>;
  std::map<std::string, Caller> callers;
  callers["EmbedImage"] = [&](grpc::ClientContext* c) {
    v1::EmbedImageRequest request;
    request.add_images()->set_encoded("x");
    v1::EmbedImageResponse response;
    return stub->EmbedImage(c, request, &response);
  };
  callers["EmbedText"] = [&](grpc::ClientContext* c) {
    v1::EmbedTextRequest request;
    request.add_texts("a");
    v1::EmbedTextResponse response;
    return stub->EmbedText(c, request, &response);
  };
  callers["Similarity"] = [&](grpc::ClientContext* c) {
    v1::SimilarityRequest request;
    request.mutable_images()->mutable_images()->add_images()->set_encoded("x");
    request.mutable_texts()->mutable_texts()->add_texts("a");
    v1::SimilarityResponse response;
    return stub->Similarity(c, request, &response);
  };
  callers["Classify"] = [&](grpc::ClientContext* c) {
    v1::ClassifyRequest request;
    request.add_images()->set_encoded("x");
    request.add_labels("cat");
    request.add_labels("dog");
    v1::ClassifyResponse response;
    return stub->Classify(c, request, &response);
  };
  callers["EmbedStream"] = [&](grpc::ClientContext* c) {
    auto stream = stub->EmbedStream(c);
    v1::EmbedStreamRequest request;
    request.set_id("0");
    request.set_text("a");
    stream->Write(request);
    stream->WritesDone();
    v1::EmbedStreamResponse response;
    while (stream->Read(&response)) {
    }
    return stream->Finish();
  };
  callers["Tokenize"] = [&](grpc::ClientContext* c) {
    v1::TokenizeRequest request;
    request.add_texts("a");
    v1::TokenizeResponse response;
    return stub->Tokenize(c, request, &response);
  };
  callers["GetModelInfo"] = [&](grpc::ClientContext* c) {
    v1::ModelInfo response;
    return stub->GetModelInfo(c, v1::GetModelInfoRequest(), &response);
  };

  const google::protobuf::ServiceDescriptor* service =
      v1::EmbedImageRequest::descriptor()->file()->FindServiceByName("ClipService");
  ASSERT_NE(service, nullptr);
  ASSERT_EQ(static_cast<size_t>(service->method_count()), callers.size());
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string name = service->method(i)->name();
    ASSERT_EQ(callers.count(name), 1u)
        << "new RPC " << name << ": add it here and check the token in its handler";
    grpc::ClientContext without;
    without.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    const grpc::Status refused = callers[name](&without);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED) << name;
    EXPECT_THAT(refused.error_message(), HasSubstr("missing bearer token")) << name;

    grpc::ClientContext wrong;
    wrong.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    wrong.AddMetadata("authorization", "Bearer not-it");
    EXPECT_EQ(callers[name](&wrong).error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << name;
  }
  EXPECT_TRUE(engine_->calls().empty()) << "a refused call reached the engine";

  for (int i = 0; i < service->method_count(); ++i) {
    const std::string name = service->method(i)->name();
    grpc::ClientContext with;
    with.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    with.AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
    const grpc::Status status = callers[name](&with);
    EXPECT_TRUE(status.ok()) << name << ": " << status.error_code() << " "
                             << status.error_message();
  }
}

// --- Everything together

TEST_F(SecurityTest, MutualTlsAndTokenTogether) {
  Start(MutualTls(), {kToken});
  EXPECT_TRUE(Info(*Client(pki_->ca.cert_pem, &pki_->client, kToken)).ok());
  EXPECT_EQ(Info(*Client(pki_->ca.cert_pem, &pki_->client)).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(Health(*Client(pki_->ca.cert_pem, &pki_->client)).ok());
  EXPECT_EQ(Info(*Client(pki_->ca.cert_pem, nullptr, kToken)).code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace clipserve
