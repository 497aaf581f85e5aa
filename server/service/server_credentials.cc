#include "server/service/server_credentials.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/service/secret_file.h"

namespace clipserve {
namespace {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;

// A PEM password callback that gives none: with no callback, OpenSSL prompts for an
// encrypted block's passphrase on the terminal (or reads stdin), and start-up would
// wait there. Any PEM block can say it is encrypted, certificates too.
int NoPassphrase(char*, int, int, void*) { return -1; }

BioPtr MemoryBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The certificates of a PEM text, in order (none when it holds no certificate).
std::vector<X509Ptr> ReadCertificates(const std::string& pem) {
  std::vector<X509Ptr> certs;
  BioPtr bio = MemoryBio(pem);
  if (bio == nullptr) return certs;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) {
    certs.emplace_back(cert);
  }
  ERR_clear_error();  // the read past the last certificate leaves an error queued
  return certs;
}

absl::Status Prefixed(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, ": ", status.message()));
}

}  // namespace

absl::Status ValidateServerTlsConfig(const ServerTlsConfig& config) {
  std::vector<X509Ptr> chain = ReadCertificates(config.cert_chain_pem);
  if (chain.empty()) {
    return absl::InvalidArgumentError("the certificate chain holds no PEM certificate");
  }
  KeyPtr key;
  {
    BioPtr bio = MemoryBio(config.private_key_pem);
    if (bio != nullptr) {
      key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
    }
    ERR_clear_error();
  }
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        "the private key is not an unencrypted PEM private key");
  }
  if (X509_check_private_key(chain[0].get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        "the private key does not match the first certificate of the chain");
  }
  if (X509_cmp_current_time(X509_get0_notAfter(chain[0].get())) < 0) {
    return absl::InvalidArgumentError("the certificate has expired");
  }
  if (X509_cmp_current_time(X509_get0_notBefore(chain[0].get())) > 0) {
    return absl::InvalidArgumentError("the certificate is not valid yet");
  }
  if (!config.client_ca_pem.empty()) {
    const std::vector<X509Ptr> client_cas = ReadCertificates(config.client_ca_pem);
    if (client_cas.empty()) {
      return absl::InvalidArgumentError("the client CA file holds no PEM certificate");
    }
    // Else every handshake would fail, each with only a generic "certificate verify
    // failed" on both sides, none pointing at this file.
    const bool any_valid_now =
        std::any_of(client_cas.begin(), client_cas.end(), [](const X509Ptr& ca) {
          return X509_cmp_current_time(X509_get0_notAfter(ca.get())) > 0 &&
                 X509_cmp_current_time(X509_get0_notBefore(ca.get())) < 0;
        });
    if (!any_valid_now) {
      return absl::InvalidArgumentError(
          "no certificate of the client CA file is valid now (each has expired or is "
          "not valid yet): no client certificate could be verified");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<ServerTlsConfig>> LoadServerTlsConfig(
    const ServerTlsFiles& files) {
  const bool cert = !files.cert_file.empty();
  const bool key = !files.key_file.empty();
  const bool client_ca = !files.client_ca_file.empty();
  if (!cert && !key) {
    if (client_ca) {
      return absl::InvalidArgumentError(
          "--tls_client_ca needs TLS: give --tls_cert and --tls_key too");
    }
    return std::optional<ServerTlsConfig>();
  }
  if (cert != key) {
    return absl::InvalidArgumentError(
        cert ? "--tls_cert needs --tls_key (the certificate's private key)"
             : "--tls_key needs --tls_cert (the certificate of the key)");
  }
  ServerTlsConfig config;
  absl::StatusOr<std::string> text =
      ReadSecretFile(files.cert_file, "TLS certificate (--tls_cert)");
  if (!text.ok()) return text.status();
  config.cert_chain_pem = *std::move(text);
  text = ReadSecretFile(files.key_file, "TLS private key (--tls_key)");
  if (!text.ok()) return text.status();
  config.private_key_pem = *std::move(text);
  if (client_ca) {
    text = ReadSecretFile(files.client_ca_file, "TLS client CA (--tls_client_ca)");
    if (!text.ok()) return text.status();
    config.client_ca_pem = *std::move(text);
    if (config.client_ca_pem.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls_client_ca '", files.client_ca_file, "' is empty"));
    }
  }
  if (absl::Status status = ValidateServerTlsConfig(config); !status.ok()) {
    return Prefixed(
        status,
        absl::StrCat(
            "--tls_cert '", files.cert_file, "', --tls_key '", files.key_file, "'",
            client_ca ? absl::StrCat(", --tls_client_ca '", files.client_ca_file, "'")
                      : ""));
  }
  return std::optional<ServerTlsConfig>(std::move(config));
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const std::optional<ServerTlsConfig>& config) {
  if (!config.has_value()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      config->client_ca_pem.empty()
          ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
          : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = config->client_ca_pem;
  options.pem_key_cert_pairs.push_back({config->private_key_pem, config->cert_chain_pem});
  return grpc::SslServerCredentials(options);
}

}  // namespace clipserve
