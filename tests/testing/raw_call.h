#ifndef CLIPSERVE_TESTS_TESTING_RAW_CALL_H_
#define CLIPSERVE_TESTS_TESTING_RAW_CALL_H_

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/client_context.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"

namespace clipserve::testing {

// Calls `method` ("/package.Service/Method") of the server on 127.0.0.1:`port` with
// `request` as the bytes of its one message, for tests that send what no typed stub
// would; the reply's bytes go to `response` when given. Gives up after 30 s.
inline grpc::Status CallWithBytes(int port, const std::string& method,
                                  const std::string& request,
                                  std::string* response = nullptr) {
  grpc::GenericStub generic(grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                                grpc::InsecureChannelCredentials()));
  grpc::Slice slice(request);
  const grpc::ByteBuffer sent(&slice, 1);
  grpc::ByteBuffer received;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&context, method, {}, &sent, &received, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  if (status.ok() && response != nullptr) {
    std::vector<grpc::Slice> slices;
    if (!received.Dump(&slices).ok()) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "the reply has no bytes");
    }
    response->clear();
    for (const grpc::Slice& part : slices) {
      response->append(reinterpret_cast<const char*>(part.begin()), part.size());
    }
  }
  return status;
}

// Opens a call to `method` of the server on 127.0.0.1:`port` as a stream and sends no
// message: cancels it once its headers are sent when `cancel`, else closes it. Returns
// the status the client saw.
inline grpc::Status CallWithoutMessage(int port, const std::string& method, bool cancel) {
  grpc::GenericStub generic(grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                                grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::CompletionQueue queue;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      generic.PrepareCall(&context, method, &queue);
  // Each operation is awaited before the next starts; tags only tell them apart.
  const auto await = [&queue](int tag) {
    void* got = nullptr;
    bool ok = false;
    while (queue.Next(&got, &ok) && got != reinterpret_cast<void*>(tag)) {
    }
  };
  call->StartCall(reinterpret_cast<void*>(1));
  await(1);
  if (cancel) {
    context.TryCancel();
  } else {
    call->WritesDone(reinterpret_cast<void*>(2));
    await(2);
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(3));
  await(3);
  queue.Shutdown();
  void* got = nullptr;
  bool ok = false;
  while (queue.Next(&got, &ok)) {
  }
  return status;
}

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_TESTING_RAW_CALL_H_
