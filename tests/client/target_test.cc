#include "client/target.h"

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

// A resolver with a fixed table; counts lookups.
struct FakeDns {
  std::map<std::string, std::vector<std::string>> table;
  int lookups = 0;

  HostResolver Resolver() {
    return [this](const std::string& host) -> absl::StatusOr<std::vector<std::string>> {
      ++lookups;
      auto it = table.find(host);
      if (it == table.end()) return absl::NotFoundError("cannot resolve " + host);
      return it->second;
    };
  }
};

TEST(ToChannelTargetTest, SingleEndpointsPassThrough) {
  FakeDns dns;
  EXPECT_EQ(ToChannelTarget("localhost:50051", dns.Resolver()).value(),
            "localhost:50051");
  EXPECT_EQ(ToChannelTarget(" 10.0.0.1:8080 ", dns.Resolver()).value(), "10.0.0.1:8080");
  EXPECT_EQ(ToChannelTarget("[::1]:50051", dns.Resolver()).value(), "[::1]:50051");
  EXPECT_EQ(dns.lookups, 0) << "single names are left to gRPC's resolver";
}

TEST(ToChannelTargetTest, UrisPassThrough) {
  FakeDns dns;
  for (const char* uri :
       {"dns:///clip.example:50051", "dns:clip:1", "ipv4:1.2.3.4:5", "ipv6:[::1]:5",
        "ipv4:1.2.3.4:5,1.2.3.5:5", "unix:///tmp/clip.sock", "unix-abstract:clip",
        "xds:///clip", "custom://thing"}) {
    EXPECT_EQ(ToChannelTarget(uri, dns.Resolver()).value(), uri);
  }
}

TEST(ToChannelTargetTest, Ipv4ListBecomesMultiAddressTarget) {
  FakeDns dns;
  EXPECT_EQ(ToChannelTarget("10.0.0.1:50051,10.0.0.2:50052", dns.Resolver()).value(),
            "ipv4:10.0.0.1:50051,10.0.0.2:50052");
  EXPECT_EQ(ToChannelTarget("10.0.0.1:1, 10.0.0.1:1 ,10.0.0.3:1", dns.Resolver()).value(),
            "ipv4:10.0.0.1:1,10.0.0.3:1")
      << "duplicates collapse, whitespace is trimmed";
}

TEST(ToChannelTargetTest, Ipv6ListBecomesMultiAddressTarget) {
  FakeDns dns;
  EXPECT_EQ(ToChannelTarget("[::1]:1,[fe80::2]:2", dns.Resolver()).value(),
            "ipv6:[::1]:1,[fe80::2]:2");
}

TEST(ToChannelTargetTest, NamesInAListAreResolvedOnce) {
  FakeDns dns;
  dns.table["a.example"] = {"10.0.0.1", "10.0.0.2", "fd00::1"};
  dns.table["b.example"] = {"10.0.0.3"};
  EXPECT_EQ(ToChannelTarget("a.example:9000,b.example:9001", dns.Resolver()).value(),
            "ipv4:10.0.0.1:9000,10.0.0.2:9000,10.0.0.3:9001");
  EXPECT_EQ(dns.lookups, 2);
}

TEST(ToChannelTargetTest, NamesFollowTheFamilyEveryEntryHas) {
  FakeDns dns;
  dns.table["six.example"] = {"10.9.9.9", "fd00::9"};
  EXPECT_EQ(ToChannelTarget("[::1]:1,six.example:2", dns.Resolver()).value(),
            "ipv6:[::1]:1,[fd00::9]:2");
}

TEST(ToChannelTargetTest, MixedFamiliesAreRejected) {
  FakeDns dns;
  auto target = ToChannelTarget("10.0.0.1:1,[::1]:2", dns.Resolver());
  EXPECT_EQ(target.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(target.status().message().find("mixes IPv4 and IPv6"), std::string::npos);
}

TEST(ToChannelTargetTest, UnresolvableNameInAListIsNotFound) {
  FakeDns dns;
  auto target = ToChannelTarget("10.0.0.1:1,nowhere.example:2", dns.Resolver());
  EXPECT_EQ(target.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(target.status().message().find("nowhere.example"), std::string::npos);
}

TEST(ToChannelTargetTest, MalformedTargetsAreInvalidArgument) {
  FakeDns dns;
  for (const char* bad :
       {"", "   ", "localhost", "localhost:", "localhost:0", "localhost:65536",
        "localhost:http", ":50051", "::1:50051", "[::1]", "[::1:50051", "[nothost]:1",
        "10.0.0.1:1,", "10.0.0.1:1,,10.0.0.2:1", "10.0.0.1:1,10.0.0.2",
        // A URI in a list would reach gRPC whole, as one name to look up.
        "a:1, dns:///b:2", "10.0.0.1:1,ipv4:10.0.0.2:1",
        // gRPC reads schemes as written: this would be a host name.
        "DNS:///127.0.0.1:1", "IPV4:127.0.0.1:1",
        // A space inside a host would be looked up with it.
        "127.0.0.1 :1", "a b:1", "10.0.0.1:1,10.0.0.2 :1"}) {
    auto target = ToChannelTarget(bad, dns.Resolver());
    EXPECT_EQ(target.status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << bad << "' -> " << target.status();
  }
}

// An IPv6 address without brackets is not cut at its last colon into a "port".
TEST(ToChannelTargetTest, AnUnbracketedIpv6AddressIsNamedWhole) {
  FakeDns dns;
  auto target = ToChannelTarget("2001:db8::5", dns.Resolver());
  EXPECT_EQ(target.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(target.status().message(),
            "IPv6 address '2001:db8::5' needs brackets and a port: [2001:db8::5]:PORT");
}

TEST(SystemHostResolverTest, ResolvesLocalhostNumerically) {
  // Numeric hosts need no DNS, so this works in a sandbox without a network.
  auto addresses = SystemHostResolver()("127.0.0.1");
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  EXPECT_EQ(*addresses, std::vector<std::string>{"127.0.0.1"});
}

}  // namespace
}  // namespace clipserve
