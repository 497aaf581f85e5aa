#include "tests/integration/loopback_stack.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "server/common/status_macros.h"
#include "server/model/clip_model.h"
#include "server/tokenizer/bpe_tokenizer.h"
#include "server/tokenizer/builtin_vocabulary.h"
#include "tests/testing/tiny_clip_config.h"

namespace clipserve::testing {

absl::StatusOr<LoopbackStack> StartLoopbackStack(
    const EmbeddingEngineOptions& engine_options,
    const ClipServiceOptions& service_options) {
  LoopbackStack stack;
  LoadedModel loaded;
  CLIPSERVE_ASSIGN_OR_RETURN(loaded.model, ClipModel::Create(TinyClipConfig(), 11));
  loaded.name = "tiny";
  loaded.random_weights = true;
  CLIPSERVE_ASSIGN_OR_RETURN(BpeVocabulary vocabulary, BuiltinClipVocabulary());
  CLIPSERVE_ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> tokenizer,
                             BpeTokenizer::Create(std::move(vocabulary), {}));
  CLIPSERVE_ASSIGN_OR_RETURN(
      stack.engine,
      EmbeddingEngine::Create(std::move(loaded), std::move(tokenizer), engine_options));
  std::vector<std::unique_ptr<grpc::Service>> services;
  CLIPSERVE_ASSIGN_OR_RETURN(services.emplace_back(),
                             ClipService::Create(stack.engine.get(), service_options));
  ClipServerOptions server_options;
  server_options.host = "127.0.0.1";
  server_options.port = 0;
  CLIPSERVE_ASSIGN_OR_RETURN(stack.server,
                             ClipServer::Create(server_options, std::move(services)));
  stack.stub = v1::ClipService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", stack.server->port()),
                          grpc::InsecureChannelCredentials()));
  return stack;
}

}  // namespace clipserve::testing
