#include "server/service/peer_address.h"

#include "gtest/gtest.h"

namespace clipserve {
namespace {

TEST(PeerHostTest, DropsThePortOfIpAddresses) {
  EXPECT_EQ(PeerHost("ipv4:10.1.2.3:41234"), "10.1.2.3");
  EXPECT_EQ(PeerHost("ipv4:127.0.0.1:1"), "127.0.0.1");
  EXPECT_EQ(PeerHost("ipv6:[fd00::7]:41234"), "fd00::7");
  EXPECT_EQ(PeerHost("ipv6:[::1]:50051"), "::1");
  EXPECT_EQ(PeerHost("ipv6:%5B::1%5D:50051"), "::1");
  // A zone id, as gRPC 1.51 writes it and %-encoded as newer versions do: one key.
  EXPECT_EQ(PeerHost("ipv6:[fe80::1%eth0]:9"), "fe80::1%eth0");
  EXPECT_EQ(PeerHost("ipv6:%5bfe80::1%25eth0%5d:9"), "fe80::1%eth0");
}

TEST(PeerHostTest, KeepsWhatItDoesNotKnowWhole) {
  EXPECT_EQ(PeerHost("unix:/run/clipserve.sock"), "unix:/run/clipserve.sock");
  EXPECT_EQ(PeerHost("unix-abstract:clipserve"), "unix-abstract:clipserve");
  EXPECT_EQ(PeerHost(""), "");
  EXPECT_EQ(PeerHost("ipv4:nocolon"), "ipv4:nocolon");
  EXPECT_EQ(PeerHost("ipv4::80"), "ipv4::80");
  EXPECT_EQ(PeerHost("ipv6:::1"), "ipv6:::1");
  EXPECT_EQ(PeerHost("ipv6:[]:80"), "ipv6:[]:80");
  EXPECT_EQ(PeerHost("ipv6:[::1"), "ipv6:[::1");
}

}  // namespace
}  // namespace clipserve
