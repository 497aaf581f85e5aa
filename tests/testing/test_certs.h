#ifndef CLIPSERVE_TESTS_TESTING_TEST_CERTS_H_
#define CLIPSERVE_TESTS_TESTING_TEST_CERTS_H_

#include <string>
#include <vector>

namespace clipserve::testing {

// A certificate and its private key, both PEM.
struct TestCert {
  std::string cert_pem;
  std::string key_pem;
};

// Throwaway X.509 material for TLS tests, made with OpenSSL's C API at test time
// (fresh ECDSA P-256 keys, SHA-256 signatures), so no key is ever checked in and no
// certificate can expire in the repository.
//
// MakeCa: a self-signed CA (basicConstraints CA:TRUE, keyCertSign) named
// `common_name`. MakeLeaf: a certificate signed by `ca` for `common_name` with the
// subject alternative names `dns_names` and `ip_addresses`, usable for server and
// client authentication; `valid_from_hours` / `valid_for_hours` place its validity
// window relative to now (negative start and short length make an expired one).
// Abort with a message on any OpenSSL failure (tests only).
TestCert MakeCa(const std::string& common_name);
TestCert MakeLeaf(const TestCert& ca, const std::string& common_name,
                  const std::vector<std::string>& dns_names,
                  const std::vector<std::string>& ip_addresses,
                  long valid_from_hours = -1, long valid_for_hours = 24);

// What the TLS tests need: a CA, a server certificate from it for localhost and
// 127.0.0.1, a client certificate from it, and the same from an unrelated CA.
struct TestPki {
  TestCert ca;
  TestCert server;
  TestCert client;
  TestCert other_ca;
  TestCert other_server;  // localhost / 127.0.0.1, signed by other_ca
  TestCert other_client;  // signed by other_ca
};
TestPki MakeTestPki();

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_TESTING_TEST_CERTS_H_
