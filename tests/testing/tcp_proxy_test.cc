#include "tests/testing/tcp_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace clipserve::testing {
namespace {

std::string Frame(uint8_t type, uint8_t flags, const std::string& payload) {
  std::string frame;
  frame.push_back(static_cast<char>((payload.size() >> 16) & 0xff));
  frame.push_back(static_cast<char>((payload.size() >> 8) & 0xff));
  frame.push_back(static_cast<char>(payload.size() & 0xff));
  frame.push_back(static_cast<char>(type));
  frame.push_back(static_cast<char>(flags));
  frame.append(4, '\0');  // stream 0
  return frame + payload;
}

// A client's bytes: the preface, SETTINGS, a PING, a PING ACK, and a DATA frame whose
// payload looks like a PING header and must not count.
std::string ClientBytes() {
  return std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + Frame(0x4, 0, "") +
         Frame(0x6, 0, std::string(8, 'p')) + Frame(0x6, 0x1, std::string(8, 'p')) +
         Frame(0x0, 0, Frame(0x6, 0, std::string(8, 'x')));
}

TEST(Http2FrameCounterTest, CountsPingsWithoutAckWholeOrByteByByte) {
  const std::string bytes = ClientBytes();
  Http2FrameCounter whole(Http2FrameCounter::Direction::kFromClient);
  whole.Feed(bytes);
  EXPECT_EQ(whole.frames(), 4);
  EXPECT_EQ(whole.pings(), 1);
  Http2FrameCounter split(Http2FrameCounter::Direction::kFromClient);
  for (const char c : bytes) split.Feed(absl::string_view(&c, 1));
  EXPECT_EQ(split.frames(), 4);
  EXPECT_EQ(split.pings(), 1);
  // A server sends no preface: the same frames, read as from the server.
  Http2FrameCounter server(Http2FrameCounter::Direction::kFromServer);
  server.Feed(absl::string_view(bytes).substr(24));
  EXPECT_EQ(server.frames(), 4);
  EXPECT_EQ(server.pings(), 1);
}

int ListenLoopback(int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  EXPECT_EQ(listen(fd, 4), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  *port = ntohs(address.sin_port);
  return fd;
}

std::string ReadExactly(int fd, size_t size) {
  std::string out(size, '\0');
  size_t got = 0;
  while (got < size) {
    const ssize_t n = read(fd, out.data() + got, size - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  return out;
}

TEST(TcpProxyTest, ForwardsBothWaysCountsPingsAndSeesTheEnd) {
  int upstream_port = 0;
  const int listener = ListenLoopback(&upstream_port);
  auto proxy = TcpProxy::Start(upstream_port);
  ASSERT_TRUE(proxy.ok()) << proxy.status();

  const int client = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>((*proxy)->port()));
  ASSERT_EQ(connect(client, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  const int server = accept(listener, nullptr, nullptr);
  ASSERT_GE(server, 0);

  const std::string from_client = ClientBytes();
  ASSERT_EQ(write(client, from_client.data(), from_client.size()),
            static_cast<ssize_t>(from_client.size()));
  EXPECT_EQ(ReadExactly(server, from_client.size()), from_client);
  const std::string from_server =
      Frame(0x6, 0, std::string(8, 'a')) + Frame(0x6, 0, std::string(8, 'b'));
  ASSERT_EQ(write(server, from_server.data(), from_server.size()),
            static_cast<ssize_t>(from_server.size()));
  EXPECT_EQ(ReadExactly(client, from_server.size()), from_server);
  EXPECT_EQ((*proxy)->accepted(), 1);
  EXPECT_EQ((*proxy)->pings_from_client(), 1);
  EXPECT_EQ((*proxy)->pings_from_server(), 2);
  EXPECT_EQ((*proxy)->closed(), 0);

  // In a black hole the upstream's close is still seen, and the client's socket ends.
  (*proxy)->BlackHole();
  close(server);
  char byte;
  EXPECT_EQ(read(client, &byte, 1), 0);
  EXPECT_EQ((*proxy)->closed(), 1);
  EXPECT_EQ((*proxy)->pings_from_server(), 2);  // the ended link still counts
  close(client);
  close(listener);
}

}  // namespace
}  // namespace clipserve::testing
