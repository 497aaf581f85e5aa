#include "server/service/server_credentials.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/service/secret_file.h"
#include "tests/testing/test_certs.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class ServerCredentialsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = new testing::TestPki(testing::MakeTestPki());
    expired_ = new testing::TestCert(
        testing::MakeLeaf(pki_->ca, "localhost", {"localhost"}, {}, -48, 24));
  }
  static void TearDownTestSuite() {
    delete pki_;
    delete expired_;
  }

  // Under a name of this test's own: ctest runs each test in a process of its own, in
  // parallel, and a shared name let one test's files replace another's mid-read.
  static std::string Write(const std::string& name, const std::string& contents) {
    const std::string path =
        ::testing::TempDir() + "/server_credentials_test_" +
        ::testing::UnitTest::GetInstance()->current_test_info()->name() + "_" + name;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
    return path;
  }

  static ServerTlsFiles Files(const testing::TestCert& cert, const std::string& ca_pem) {
    ServerTlsFiles files;
    files.cert_file = Write("cert.pem", cert.cert_pem);
    files.key_file = Write("key.pem", cert.key_pem);
    if (!ca_pem.empty()) files.client_ca_file = Write("client_ca.pem", ca_pem);
    return files;
  }

  static absl::Status LoadError(const ServerTlsFiles& files) {
    auto config = LoadServerTlsConfig(files);
    if (config.ok()) return absl::OkStatus();
    // No error may carry key material.
    EXPECT_THAT(std::string(config.status().message()), Not(HasSubstr("PRIVATE KEY")));
    return config.status();
  }

  static testing::TestPki* pki_;
  static testing::TestCert* expired_;
};

testing::TestPki* ServerCredentialsTest::pki_ = nullptr;
testing::TestCert* ServerCredentialsTest::expired_ = nullptr;

TEST_F(ServerCredentialsTest, NoFilesMeansPlaintext) {
  auto config = LoadServerTlsConfig({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->has_value());
}

TEST_F(ServerCredentialsTest, LoadsTlsAndMutualTls) {
  auto tls = LoadServerTlsConfig(Files(pki_->server, ""));
  ASSERT_TRUE(tls.ok()) << tls.status();
  ASSERT_TRUE(tls->has_value());
  EXPECT_EQ((*tls)->cert_chain_pem, pki_->server.cert_pem);
  EXPECT_EQ((*tls)->private_key_pem, pki_->server.key_pem);
  EXPECT_EQ((*tls)->client_ca_pem, "");

  auto mutual = LoadServerTlsConfig(Files(pki_->server, pki_->ca.cert_pem));
  ASSERT_TRUE(mutual.ok()) << mutual.status();
  ASSERT_TRUE(mutual->has_value());
  EXPECT_EQ((*mutual)->client_ca_pem, pki_->ca.cert_pem);
}

TEST_F(ServerCredentialsTest, FlagCombinationsThatMakeNoSense) {
  ServerTlsFiles files = Files(pki_->server, pki_->ca.cert_pem);
  ServerTlsFiles cert_only;
  cert_only.cert_file = files.cert_file;
  absl::Status status = LoadError(cert_only);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--tls_cert needs --tls_key"));

  ServerTlsFiles key_only;
  key_only.key_file = files.key_file;
  status = LoadError(key_only);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--tls_key needs --tls_cert"));

  ServerTlsFiles ca_only;
  ca_only.client_ca_file = files.client_ca_file;
  status = LoadError(ca_only);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--tls_client_ca needs TLS"));
}

TEST_F(ServerCredentialsTest, UnreadableFilesNameTheFlagAndPath) {
  ServerTlsFiles files = Files(pki_->server, pki_->ca.cert_pem);
  files.key_file = "/no/such/key.pem";
  absl::Status status = LoadError(files);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--tls_key"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("/no/such/key.pem"));

  files = Files(pki_->server, pki_->ca.cert_pem);
  files.client_ca_file = ::testing::TempDir();  // a directory
  status = LoadError(files);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--tls_client_ca"));

  files = Files(pki_->server, "");
  files.cert_file = "/no/such/cert.pem";
  EXPECT_EQ(LoadError(files).code(), absl::StatusCode::kNotFound);
}

TEST_F(ServerCredentialsTest, WrongContentsAreInvalidArgument) {
  struct Case {
    const char* name;
    std::string cert, key, ca, expected;
  };
  const Case cases[] = {
      {"garbage cert", "not a certificate", pki_->server.key_pem, "",
       "holds no PEM certificate"},
      {"key in the cert file", pki_->server.key_pem, pki_->server.key_pem, "",
       "holds no PEM certificate"},
      {"cert in the key file", pki_->server.cert_pem, pki_->server.cert_pem, "",
       "not an unencrypted PEM private key"},
      {"key of another cert", pki_->server.cert_pem, pki_->client.key_pem, "",
       "does not match"},
      {"expired", expired_->cert_pem, expired_->key_pem, "", "expired"},
      {"garbage client CA", pki_->server.cert_pem, pki_->server.key_pem, "garbage",
       "client CA file holds no PEM certificate"},
      // Would start, then fail every handshake with a generic verify error.
      {"expired client CA", pki_->server.cert_pem, pki_->server.key_pem,
       expired_->cert_pem, "no certificate of the client CA file is valid now"},
  };
  for (const Case& c : cases) {
    ServerTlsFiles files;
    files.cert_file = Write("c.pem", c.cert);
    files.key_file = Write("k.pem", c.key);
    if (!c.ca.empty()) files.client_ca_file = Write("ca.pem", c.ca);
    const absl::Status status = LoadError(files);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.expected)) << c.name;
  }
  // A bundle where one has expired and another is valid is fine.
  const ServerTlsFiles mixed_ca =
      Files(pki_->server, expired_->cert_pem + pki_->ca.cert_pem);
  EXPECT_TRUE(LoadServerTlsConfig(mixed_ca).ok());
  ServerTlsFiles empty_ca = Files(pki_->server, "");
  empty_ca.client_ca_file = Write("empty_ca.pem", "");
  EXPECT_EQ(LoadError(empty_ca).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ServerCredentialsTest, ValidateChecksAConfigBuiltInMemory) {
  ServerTlsConfig config{pki_->server.cert_pem, pki_->server.key_pem, ""};
  EXPECT_TRUE(ValidateServerTlsConfig(config).ok());
  // A chain: the leaf first, then the CA.
  config.cert_chain_pem = pki_->server.cert_pem + pki_->ca.cert_pem;
  EXPECT_TRUE(ValidateServerTlsConfig(config).ok());
  // The CA first: the key matches the first certificate only.
  config.cert_chain_pem = pki_->ca.cert_pem + pki_->server.cert_pem;
  EXPECT_EQ(ValidateServerTlsConfig(config).code(), absl::StatusCode::kInvalidArgument);
}

// An encrypted key is refused at once. OpenSSL's default would ask for its passphrase
// on the terminal, or without one read it from stdin (the test offers it there: a
// prompt would read it and accept the key, or wait on a terminal).
TEST_F(ServerCredentialsTest, AnEncryptedKeyIsRefusedWithoutAPrompt) {
  std::string encrypted;
  {
    BIO* in = BIO_new_mem_buf(pki_->server.key_pem.data(),
                              static_cast<int>(pki_->server.key_pem.size()));
    EVP_PKEY* key = PEM_read_bio_PrivateKey(in, nullptr, nullptr, nullptr);
    ASSERT_NE(key, nullptr);
    BIO* out = BIO_new(BIO_s_mem());
    char passphrase[] = "hunter2";
    ASSERT_EQ(PEM_write_bio_PrivateKey(out, key, EVP_aes_128_cbc(),
                                       reinterpret_cast<unsigned char*>(passphrase), 7,
                                       nullptr, nullptr),
              1);
    char* data = nullptr;
    const long size = BIO_get_mem_data(out, &data);
    encrypted.assign(data, static_cast<size_t>(size));
    BIO_free(out);
    EVP_PKEY_free(key);
    BIO_free(in);
  }
  ASSERT_THAT(encrypted, HasSubstr("ENCRYPTED"));
  int offered[2];
  ASSERT_EQ(pipe(offered), 0);
  ASSERT_EQ(write(offered[1], "hunter2\n", 8), 8);
  close(offered[1]);
  const int saved_stdin = dup(0);
  ASSERT_GE(saved_stdin, 0);
  ASSERT_EQ(dup2(offered[0], 0), 0);
  const absl::Status status =
      ValidateServerTlsConfig({pki_->server.cert_pem, encrypted, ""});
  dup2(saved_stdin, 0);
  close(saved_stdin);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("not an unencrypted PEM"));
  char unread[16];
  EXPECT_EQ(read(offered[0], unread, sizeof(unread)), 8);  // nobody read the passphrase
  close(offered[0]);
}

// ReadSmallFile() itself is tested in small_file_test.cc.
TEST(SecretFileTest, RefusesFilesOverOneMiB) {
  const std::string path = ::testing::TempDir() + "/secret_file_test_big";
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      << std::string(kMaxSecretFileBytes + 1, 'x');
  auto read = ReadSecretFile(path, "test file");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(read.status().message()),
              HasSubstr("larger than 1048576 bytes"));
  EXPECT_EQ(ReadSecretFile("/dev/zero", "test file").status().code(),
            absl::StatusCode::kInvalidArgument);  // not a regular file
}

}  // namespace
}  // namespace clipserve
