#include "server/metrics/metrics_http_server.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "server/common/clock.h"
#include "server/metrics/metrics.h"

namespace clipserve {

namespace {

// Request line and headers, through their blank line.
constexpr size_t kMaxHeadBytes = 8192;
// After the response, how long the client's unread bytes are drained before the
// socket closes: closing with bytes unread sends a reset, which can destroy the
// response before the client reads it.
constexpr absl::Duration kLinger = absl::Milliseconds(500);
// How long accepting pauses when it fails for want of descriptors or memory.
constexpr absl::Duration kAcceptPause = absl::Milliseconds(100);

std::string Response(int status, absl::string_view reason, absl::string_view type,
                     absl::string_view body, bool head_only,
                     absl::string_view extra_headers = "") {
  std::string out =
      absl::StrCat("HTTP/1.1 ", status, " ", reason, "\r\nContent-Type: ", type,
                   "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n",
                   extra_headers, "\r\n");
  if (!head_only) out.append(body.data(), body.size());
  return out;
}

// Where the head of the request in `in` ends: just past the empty line that ends it,
// lines ended by CRLF or by a bare LF (RFC 9112 section 2.2 lets a server take both);
// npos while that line has not come.
size_t HeadEnd(const std::string& in) {
  size_t start = 0;  // of the current line
  for (size_t lf = in.find('\n'); lf != std::string::npos; lf = in.find('\n', start)) {
    const size_t length = lf - start;
    // The request line is never empty; an empty line after it ends the head.
    if (start > 0 && (length == 0 || (length == 1 && in[start] == '\r'))) return lf + 1;
    start = lf + 1;
  }
  return std::string::npos;
}

std::string Error(int status, absl::string_view reason, absl::string_view body,
                  bool head_only = false, absl::string_view extra_headers = "") {
  return Response(status, reason, "text/plain", body, head_only, extra_headers);
}

// Whether the request (or the part of it received) is a HEAD request.
bool IsHead(absl::string_view in) { return absl::StartsWith(in, "HEAD "); }

// HTTP-version for HTTP/1: "HTTP/1." and one digit (RFC 9112 section 2.3).
bool IsHttp1Version(absl::string_view version) {
  return version.size() == 8 && absl::StartsWith(version, "HTTP/1.") &&
         absl::ascii_isdigit(static_cast<unsigned char>(version[7]));
}

// tchar (RFC 9110 section 5.6.2).
bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
         absl::string_view("!#$%&'*+-.^_`|~").find(c) != absl::string_view::npos;
}

// A field value's characters: visible ASCII, spaces, tabs and obs-text (bytes past
// 0x7f); no other control character (RFC 9110 section 5.5).
bool IsFieldValueChar(char c) {
  const auto byte = static_cast<unsigned char>(c);
  return byte == '\t' || (byte >= 0x20 && byte != 0x7f);
}

// A Content-Length of no bytes: one or more zeros.
bool IsZero(absl::string_view value) {
  return !value.empty() && absl::c_all_of(value, [](char c) { return c == '0'; });
}

// Binds and listens on `host`:`port`; the socket, or -1 with the reason in `*error`
// ("the host does not resolve (...)", or the last bind's strerror). An IPv6 address
// may come bracketed, as --host spells it ("[::]").
int Listen(std::string host, int port, std::string* error) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int resolved =
          getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
      resolved != 0) {
    *error = absl::StrCat("the host does not resolve (", gai_strerror(resolved), ")");
    return -1;
  }
  int fd = -1;
  errno = EADDRNOTAVAIL;  // for a name that resolves to no address
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                a->ai_protocol);
    if (fd < 0) continue;
    // SO_REUSEADDR only: SO_REUSEPORT would let a second server share the port with
    // a running one unnoticed, where a clear bind error is better.
    const int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (a->ai_family == AF_INET6) {
      // "::" means IPv4 too, as gRPC's port takes it, also on hosts whose
      // net.ipv6.bindv6only=1 makes IPv6 sockets IPv6-only by default.
      const int no = 0;
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &no, sizeof(no));
    }
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
      const int error = errno;
      close(fd);
      fd = -1;
      errno = error;
    }
  }
  if (fd < 0) *error = std::strerror(errno);
  freeaddrinfo(found);
  return fd;
}

int BoundPort(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return -1;
  if (address.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
  }
  if (address.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);
  }
  return -1;
}

// The address bytes of `address` (IPv4 mapped into IPv6 as plain IPv4), "" for
// another family.
std::string PeerAddress(const sockaddr_storage& address) {
  if (address.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
    return std::string(reinterpret_cast<const char*>(&v4.sin_addr), 4);
  }
  if (address.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
    const auto* bytes = reinterpret_cast<const char*>(&v6.sin6_addr);
    if (IN6_IS_ADDR_V4MAPPED(&v6.sin6_addr)) return std::string(bytes + 12, 4);
    return std::string(bytes, 16);
  }
  return "";
}

}  // namespace

struct MetricsHttpServer::Connection {
  enum class State { kReading, kWriting, kDraining };

  int fd = -1;
  // The client's address (4 bytes for IPv4, also when mapped into IPv6; 16 for IPv6),
  // without the port.
  std::string peer;
  absl::Time accepted;
  absl::Time deadline;  // closed then, whatever its state
  State state = State::kReading;
  std::string in;  // the request head so far
  std::string out;
  size_t sent = 0;
};

// The oldest connection of the address holding the most (ties: the older one).
size_t MetricsHttpServer::EvictionVictim(const std::vector<Connection>& connections) {
  absl::flat_hash_map<absl::string_view, int> per_peer;
  for (const Connection& c : connections) ++per_peer[c.peer];
  size_t victim = 0;
  for (size_t i = 1; i < connections.size(); ++i) {
    const int count = per_peer[connections[i].peer];
    const int victim_count = per_peer[connections[victim].peer];
    if (count > victim_count ||
        (count == victim_count &&
         connections[i].accepted < connections[victim].accepted)) {
      victim = i;
    }
  }
  return victim;
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Create(
    const MetricsHttpServerOptions& options, const Metrics* metrics) {
  if (metrics == nullptr) {
    return absl::InvalidArgumentError("MetricsHttpServer needs a Metrics object");
  }
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics port ", options.port, " is outside 0..65535"));
  }
  if (options.max_connections < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics max_connections must be at least 1, got ", options.max_connections));
  }
  if (options.connection_deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics connection_deadline must be positive, got ",
                     absl::FormatDuration(options.connection_deadline)));
  }
  if (options.host.empty()) {
    return absl::InvalidArgumentError(
        "no host to listen on: give an address (0.0.0.0 for every IPv4 interface, :: "
        "for every interface, 127.0.0.1 for this machine only) or a name");
  }
  std::string error;
  const int listen_fd = Listen(options.host, options.port, &error);
  if (listen_fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ", options.host,
                                               ":", options.port, ": ", error));
  }
  const int port = BoundPort(listen_fd);
  const int wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (port <= 0 || wake_fd < 0) {
    const std::string error = std::strerror(errno);
    close(listen_fd);
    if (wake_fd >= 0) close(wake_fd);
    return absl::InternalError(absl::StrCat("cannot start the metrics server: ", error));
  }
  std::unique_ptr<MetricsHttpServer> server(
      new MetricsHttpServer(options, metrics, listen_fd, wake_fd, port));
  // Connections made from now on wait in the listen backlog until the thread runs.
  server->thread_ = std::thread([raw = server.get()] { raw->Loop(); });
  return server;
}

MetricsHttpServer::MetricsHttpServer(const MetricsHttpServerOptions& options,
                                     const Metrics* metrics, int listen_fd, int wake_fd,
                                     int port)
    : options_(options),
      metrics_(metrics),
      listen_fd_(listen_fd),
      wake_fd_(wake_fd),
      port_(port) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

std::string MetricsHttpServer::authority() const {
  const absl::string_view host = options_.host;
  const bool bare_ipv6 = absl::StrContains(host, ':') && !absl::StartsWith(host, "[");
  return bare_ipv6 ? absl::StrCat("[", host, "]:", port_)
                   : absl::StrCat(host, ":", port_);
}

void MetricsHttpServer::SetReadinessCheck(std::function<bool()> ready) {
  absl::MutexLock lock(&mu_);
  ready_ = std::move(ready);
}

bool MetricsHttpServer::Ready() const {
  std::function<bool()> ready;
  {
    absl::MutexLock lock(&mu_);
    ready = ready_;
  }
  // Called without mu_, so the check may take locks of its own.
  return ready != nullptr && ready();
}

void MetricsHttpServer::Stop() {
  absl::MutexLock lock(&stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  const uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) != sizeof(one)) {
    // Only fails when the counter would overflow: the thread is being woken anyway.
  }
  if (thread_.joinable()) thread_.join();
  // Closed, not just left unserved: a client connecting now is refused at once.
  close(listen_fd_);
  close(wake_fd_);
}

std::string MetricsHttpServer::Respond(const std::string& head) const {
  std::vector<absl::string_view> lines = absl::StrSplit(head, '\n');
  for (absl::string_view& line : lines) absl::ConsumeSuffix(&line, "\r");
  const std::vector<absl::string_view> request_line = absl::StrSplit(lines[0], ' ');
  // Every answer to HEAD, errors included, goes without its body (RFC 9110 section
  // 9.3.2).
  const bool head_only = IsHead(head);
  if (request_line.size() != 3 || !IsHttp1Version(request_line[2])) {
    return Error(400, "Bad Request", "not an HTTP/1.x request\n", head_only);
  }
  const absl::string_view method = request_line[0];
  if (method != "GET" && !head_only) {
    return Error(405, "Method Not Allowed", "only GET and HEAD are served\n",
                 /*head_only=*/false, "Allow: GET, HEAD\r\n");
  }
  absl::string_view target = request_line[1];
  // The absolute form (http://host/path), which a server must take too (RFC 9112
  // section 3.2.2): the path is what follows the authority, which ends at the first
  // '/', '?' or '#' ("http://host?x" is the path "/" with a query).
  for (const absl::string_view scheme : {"http://", "https://"}) {
    if (absl::StartsWithIgnoreCase(target, scheme)) {
      target.remove_prefix(scheme.size());
      const size_t end = target.find_first_of("/?#");
      target =
          end == absl::string_view::npos || target[end] != '/' ? "/" : target.substr(end);
    }
  }
  if (target.empty() || target[0] != '/') {
    return Error(400, "Bad Request", "not an HTTP/1.x request\n", head_only);
  }
  bool announces_body = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;  // the blank line at the end
    const size_t colon = lines[i].find(':');
    // A field line is a name of token characters, a colon and a value of visible
    // characters, spaces and tabs (RFC 9110 section 5): no whitespace in or before
    // the name, which could hide a header from this server that a proxy reads (RFC
    // 9112 section 5.1), no line folded onto the one before, no NUL or other control
    // character in the value.
    if (colon == absl::string_view::npos || colon == 0 ||
        !absl::c_all_of(lines[i].substr(0, colon), IsTokenChar) ||
        !absl::c_all_of(lines[i].substr(colon + 1), IsFieldValueChar)) {
      return Error(400, "Bad Request", "a header line is not \"name: value\"\n",
                   head_only);
    }
    const std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
    const absl::string_view value =
        absl::StripAsciiWhitespace(lines[i].substr(colon + 1));
    if (name == "transfer-encoding" || name == "expect" ||
        (name == "content-length" && !IsZero(value))) {
      announces_body = true;
    }
  }
  if (announces_body) {
    return Error(413, "Payload Too Large", "a request body is not accepted\n", head_only);
  }
  const absl::string_view path = target.substr(0, target.find('?'));
  if (path == "/metrics") {
    return Response(200, "OK", Metrics::kContentType, metrics_->Serialize(), head_only);
  }
  if (path == "/healthz") return Response(200, "OK", "text/plain", "ok\n", head_only);
  if (path == "/readyz") {
    return Ready() ? Response(200, "OK", "text/plain", "ready\n", head_only)
                   : Response(503, "Service Unavailable", "text/plain", "not ready\n",
                              head_only);
  }
  return Response(404, "Not Found", "text/plain", "not found\n", head_only);
}

void MetricsHttpServer::Loop() {
  RealClock* clock = RealClock::Get();
  std::vector<Connection> connections;
  std::vector<pollfd> polled;
  // While accept() fails for want of descriptors or memory, the pending connection
  // keeps the listening socket readable: it is left out of poll() for a while
  // instead of waking it again at once.
  absl::Time accept_paused_until = absl::InfinitePast();
  const auto close_at = [&](size_t i) {
    close(connections[i].fd);
    connections.erase(connections.begin() + static_cast<std::ptrdiff_t>(i));
  };
  while (true) {
    // Wait for the next event, or the nearest deadline.
    const absl::Time now = clock->Now();
    absl::Time wake_at = absl::InfiniteFuture();
    polled.clear();
    polled.push_back({wake_fd_, POLLIN, 0});
    const bool accept_paused = now < accept_paused_until;
    polled.push_back({accept_paused ? -1 : listen_fd_, POLLIN, 0});
    if (accept_paused) wake_at = accept_paused_until;
    for (const Connection& c : connections) {
      polled.push_back(
          {c.fd,
           static_cast<short>(c.state == Connection::State::kWriting ? POLLOUT : POLLIN),
           0});
      wake_at = std::min(wake_at, c.deadline);
    }
    int timeout_ms = -1;
    if (wake_at != absl::InfiniteFuture()) {
      timeout_ms = static_cast<int>(
          std::clamp<int64_t>(absl::ToInt64Milliseconds(wake_at - now) + 1, 0, 60'000));
    }
    if (poll(polled.data(), polled.size(), timeout_ms) < 0) {
      // EINTR, or ENOMEM for the poll set: look again shortly.
      absl::SleepFor(absl::Milliseconds(errno == EINTR ? 0 : 10));
      continue;
    }
    if (polled[0].revents != 0) break;  // Stop()

    // Serve the open connections first: `polled` lists them in order from index 2.
    const absl::Time after = clock->Now();
    for (size_t i = connections.size(); i-- > 0;) {
      Connection& c = connections[i];
      const short events = polled[i + 2].revents;
      bool done = after >= c.deadline || (events & (POLLERR | POLLNVAL)) != 0;
      if (!done && c.state != Connection::State::kWriting &&
          (events & (POLLIN | POLLHUP))) {
        char buffer[4096];
        const ssize_t n = recv(c.fd, buffer, sizeof(buffer), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
          done = true;  // the client closed (or broke) its side
        } else if (n > 0 && c.state == Connection::State::kReading) {
          c.in.append(buffer, static_cast<size_t>(n));
          const size_t end = HeadEnd(c.in);
          if (end != std::string::npos && end <= kMaxHeadBytes) {
            c.in.resize(end);  // bytes after the head are not read
            c.out = Respond(c.in);
          } else if (c.in.size() > kMaxHeadBytes) {
            c.out = Error(431, "Request Header Fields Too Large",
                          "request line and headers over 8 KiB\n", IsHead(c.in));
          }
          if (!c.out.empty()) {
            c.state = Connection::State::kWriting;
            c.in = std::string();
          }
        }
      }
      if (!done && c.state == Connection::State::kWriting) {
        const ssize_t n =
            send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
        if (n > 0) c.sent += static_cast<size_t>(n);
        if (n < 0 && errno != EAGAIN && errno != EINTR) done = true;
        if (c.sent == c.out.size()) {
          shutdown(c.fd, SHUT_WR);
          c.state = Connection::State::kDraining;
          c.out = std::string();
          c.deadline = std::min(c.deadline, after + kLinger);
        }
      }
      if (done) close_at(i);
    }

    // Then take new connections; past the limit, each closes the oldest open one of
    // the address that holds the most, so that a flood from one address closes its own
    // connections, not a probe's from another.
    if (polled[1].revents & POLLIN) {
      for (int taken = 0; taken < options_.max_connections; ++taken) {
        sockaddr_storage address{};
        socklen_t address_size = sizeof(address);
        const int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&address),
                               &address_size, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            accept_paused_until = after + kAcceptPause;
          }
          break;  // EAGAIN: none left; ECONNABORTED and the like: the next poll
        }
        if (static_cast<int>(connections.size()) >= options_.max_connections) {
          close_at(EvictionVictim(connections));
        }
        Connection c;
        c.fd = fd;
        c.peer = PeerAddress(address);
        c.accepted = after;
        c.deadline = after + options_.connection_deadline;
        connections.push_back(std::move(c));
      }
    }
  }
  for (const Connection& c : connections) close(c.fd);
}

}  // namespace clipserve
