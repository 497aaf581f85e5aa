#ifndef CLIPSERVE_TESTS_TESTING_TCP_PROXY_H_
#define CLIPSERVE_TESTS_TESTING_TCP_PROXY_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace clipserve::testing {

// Counts the HTTP/2 frames of one direction of a cleartext (h2c) connection, fed the
// bytes in chunks of any size as they pass. The client's direction starts with the
// 24-byte connection preface, which is skipped.
class Http2FrameCounter {
 public:
  enum class Direction { kFromClient, kFromServer };
  explicit Http2FrameCounter(Direction direction);

  void Feed(absl::string_view bytes);

  // PING frames without the ACK flag: keepalive and bandwidth probes, not answers.
  int pings() const { return pings_; }
  int frames() const { return frames_; }

 private:
  size_t preface_left_;
  std::string header_;  // the next frame's header, while it is incomplete
  uint64_t payload_left_ = 0;
  int pings_ = 0;
  int frames_ = 0;
};

// A loopback TCP proxy for tests of connection management: forwards each connection it
// accepts to 127.0.0.1:<upstream port>, counts the HTTP/2 PING frames both ways, and
// can turn into a black hole, which reads and drops everything and sends nothing: a
// peer that vanished without closing its socket (a crashed host, a cut network).
// Counters are safe to read from any thread while connections run.
class TcpProxy {
 public:
  // Listens on an ephemeral loopback port and starts forwarding.
  static absl::StatusOr<std::unique_ptr<TcpProxy>> Start(int upstream_port);
  // Stops forwarding and closes every socket.
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }

  // From now on nothing is forwarded either way; a side that closes its socket is
  // still noticed (closed() counts it).
  void BlackHole() { black_hole_.store(true); }

  int accepted() const { return accepted_.load(); }
  // Connections that ended: one side closed its socket or failed.
  int closed() const { return closed_.load(); }
  // PING frames without ACK sent by the upstream server / by the clients.
  int pings_from_server() const { return pings_from_server_.load(); }
  int pings_from_client() const { return pings_from_client_.load(); }

 private:
  TcpProxy(int listen_fd, int port, int upstream_port, int wake_read, int wake_write);
  void Run();

  const int listen_fd_;
  const int port_;
  const int upstream_port_;
  const int wake_read_;
  const int wake_write_;
  std::atomic<bool> black_hole_{false};
  std::atomic<int> accepted_{0};
  std::atomic<int> closed_{0};
  std::atomic<int> pings_from_server_{0};
  std::atomic<int> pings_from_client_{0};
  std::thread thread_;
};

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_TESTING_TCP_PROXY_H_
