#include "tests/testing/tcp_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace clipserve::testing {
namespace {

constexpr size_t kPrefaceBytes = 24;  // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
constexpr size_t kFrameHeaderBytes = 9;
constexpr uint8_t kPingFrame = 0x6;
constexpr uint8_t kAckFlag = 0x1;

absl::Status ErrnoError(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

sockaddr_in Loopback(int port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  return address;
}

// A connected socket to 127.0.0.1:port, or -1.
int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const sockaddr_in address = Loopback(port);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

bool SendAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t sent = send(fd, data, size, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) return false;
    data += sent;
    size -= static_cast<size_t>(sent);
  }
  return true;
}

}  // namespace

Http2FrameCounter::Http2FrameCounter(Direction direction)
    : preface_left_(direction == Direction::kFromClient ? kPrefaceBytes : 0) {}

void Http2FrameCounter::Feed(absl::string_view bytes) {
  while (!bytes.empty()) {
    if (preface_left_ > 0) {
      const size_t n = std::min(preface_left_, bytes.size());
      preface_left_ -= n;
      bytes.remove_prefix(n);
    } else if (payload_left_ > 0) {
      const size_t n = static_cast<size_t>(
          std::min<uint64_t>(payload_left_, static_cast<uint64_t>(bytes.size())));
      payload_left_ -= n;
      bytes.remove_prefix(n);
    } else {
      const size_t n = std::min(kFrameHeaderBytes - header_.size(), bytes.size());
      header_.append(bytes.data(), n);
      bytes.remove_prefix(n);
      if (header_.size() < kFrameHeaderBytes) return;
      const auto byte = [this](size_t i) { return static_cast<uint8_t>(header_[i]); };
      payload_left_ = (uint64_t{byte(0)} << 16) | (uint64_t{byte(1)} << 8) | byte(2);
      ++frames_;
      if (byte(3) == kPingFrame && (byte(4) & kAckFlag) == 0) ++pings_;
      header_.clear();
    }
  }
}

absl::StatusOr<std::unique_ptr<TcpProxy>> TcpProxy::Start(int upstream_port) {
  const int listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd < 0) return ErrnoError("socket");
  sockaddr_in address = Loopback(0);
  socklen_t length = sizeof(address);
  if (bind(listen_fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) !=
          0 ||
      listen(listen_fd, 16) != 0 ||
      getsockname(listen_fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    absl::Status error = ErrnoError("listen on loopback");
    close(listen_fd);
    return error;
  }
  int wake[2];
  if (pipe2(wake, O_CLOEXEC) != 0) {
    absl::Status error = ErrnoError("pipe2");
    close(listen_fd);
    return error;
  }
  auto proxy = std::unique_ptr<TcpProxy>(
      new TcpProxy(listen_fd, ntohs(address.sin_port), upstream_port, wake[0], wake[1]));
  proxy->thread_ = std::thread([p = proxy.get()] { p->Run(); });
  return proxy;
}

TcpProxy::TcpProxy(int listen_fd, int port, int upstream_port, int wake_read,
                   int wake_write)
    : listen_fd_(listen_fd),
      port_(port),
      upstream_port_(upstream_port),
      wake_read_(wake_read),
      wake_write_(wake_write) {}

TcpProxy::~TcpProxy() {
  const char stop = 'x';
  while (write(wake_write_, &stop, 1) < 0 && errno == EINTR) {
  }
  thread_.join();
  close(wake_read_);
  close(wake_write_);
  close(listen_fd_);
}

void TcpProxy::Run() {
  struct Link {
    int fd[2];  // [0]: the client's socket, [1]: the upstream server's
    Http2FrameCounter from_client{Http2FrameCounter::Direction::kFromClient};
    Http2FrameCounter from_server{Http2FrameCounter::Direction::kFromServer};
    bool open = true;
  };
  std::vector<std::unique_ptr<Link>> links;
  std::vector<char> buffer(1 << 16);
  // Counted before the sockets close, so that whoever sees the close sees the count.
  const auto end = [this](Link& link) {
    closed_.fetch_add(1);
    close(link.fd[0]);
    close(link.fd[1]);
    link.open = false;
  };
  while (true) {
    std::vector<pollfd> fds = {{wake_read_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (const auto& link : links) {
      fds.push_back({link->fd[0], POLLIN, 0});
      fds.push_back({link->fd[1], POLLIN, 0});
    }
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents != 0) break;
    if (fds[1].revents != 0) {
      const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client >= 0) {
        accepted_.fetch_add(1);
        const int server = ConnectLoopback(upstream_port_);
        if (server < 0) {
          close(client);
          closed_.fetch_add(1);
        } else {
          auto link = std::make_unique<Link>();
          link->fd[0] = client;
          link->fd[1] = server;
          links.push_back(std::move(link));
        }
      }
    }
    // Links accepted in this round have no entry in fds yet.
    const size_t polled = (fds.size() - 2) / 2;
    for (size_t i = 0; i < polled; ++i) {
      Link& link = *links[i];
      for (int side = 0; side < 2 && link.open; ++side) {
        if (fds[2 + 2 * i + side].revents == 0) continue;
        const ssize_t n = read(link.fd[side], buffer.data(), buffer.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          end(link);
          break;
        }
        const absl::string_view bytes(buffer.data(), static_cast<size_t>(n));
        // Counted before the bytes go on, so that whoever receives them sees the count.
        Http2FrameCounter& counter = side == 0 ? link.from_client : link.from_server;
        const int pings_before = counter.pings();
        counter.Feed(bytes);
        (side == 0 ? pings_from_client_ : pings_from_server_)
            .fetch_add(counter.pings() - pings_before);
        if (!black_hole_.load() &&
            !SendAll(link.fd[1 - side], buffer.data(), static_cast<size_t>(n))) {
          end(link);
        }
      }
    }
    links.erase(std::remove_if(links.begin(), links.end(),
                               [](const auto& link) { return !link->open; }),
                links.end());
  }
  for (const auto& link : links) {
    if (link->open) {
      close(link->fd[0]);
      close(link->fd[1]);
    }
  }
}

}  // namespace clipserve::testing
