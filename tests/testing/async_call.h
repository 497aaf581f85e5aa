#ifndef CLIPSERVE_TESTS_TESTING_ASYNC_CALL_H_
#define CLIPSERVE_TESTS_TESTING_ASYNC_CALL_H_

#include <functional>
#include <memory>
#include <utility>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"

namespace clipserve::testing {

using Rpc = ::clipserve::v1::ClipService::StubInterface::async_interface;

// A unary call left to run while the test goes on: it holds all that gRPC uses until
// the call ends. Destroyed unanswered (a failed assertion), it cancels the call and
// waits for its end.
template <typename Request, typename Response>
struct AsyncCall {
  grpc::ClientContext context;
  Request request;
  Response response;
  grpc::Status status;
  absl::Notification done;

  AsyncCall() = default;
  AsyncCall(const AsyncCall&) = delete;
  AsyncCall& operator=(const AsyncCall&) = delete;
  ~AsyncCall() {
    if (!done.HasBeenNotified()) {
      context.TryCancel();
      done.WaitForNotification();
    }
  }

  // Whether the call ended within `timeout`.
  bool Await(absl::Duration timeout = absl::Seconds(10)) {
    return done.WaitForNotificationWithTimeout(timeout);
  }
};

// Starts `method` of `rpc` (&Rpc::EmbedText, say) with `request`, and with `deadline`
// when it is finite, and returns at once.
template <typename Request, typename Response>
std::unique_ptr<AsyncCall<Request, Response>> StartCall(
    Rpc* rpc,
    void (Rpc::*method)(grpc::ClientContext*, const Request*, Response*,
                        std::function<void(grpc::Status)>),
    Request request, absl::Time deadline = absl::InfiniteFuture()) {
  auto call = std::make_unique<AsyncCall<Request, Response>>();
  call->request = std::move(request);
  if (deadline != absl::InfiniteFuture()) {
    call->context.set_deadline(absl::ToChronoTime(deadline));
  }
  AsyncCall<Request, Response>* raw = call.get();
  (rpc->*method)(&raw->context, &raw->request, &raw->response, [raw](grpc::Status s) {
    raw->status = std::move(s);
    raw->done.Notify();
  });
  return call;
}

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_TESTING_ASYNC_CALL_H_
