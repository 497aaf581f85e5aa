#ifndef CLIPSERVE_SERVER_SERVICE_SERVER_CREDENTIALS_H_
#define CLIPSERVE_SERVER_SERVICE_SERVER_CREDENTIALS_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace clipserve {

// The PEM material of a TLS listener, read at start-up.
struct ServerTlsConfig {
  // The server's certificate, optionally followed by intermediate certificates.
  std::string cert_chain_pem;
  // The private key of the first certificate of cert_chain_pem.
  std::string private_key_pem;
  // "" = plain TLS (clients are not asked for a certificate). Otherwise mutual TLS:
  // every client must present a certificate that chains to one of these CA
  // certificates, or the handshake fails and no RPC runs.
  std::string client_ca_pem;
};

// The files named by the --tls_cert, --tls_key and --tls_client_ca flags ("" = not
// given).
struct ServerTlsFiles {
  std::string cert_file;
  std::string key_file;
  std::string client_ca_file;
};

// Reads and checks the TLS files. Returns nullopt when none is given (plaintext).
// Errors, each naming the flag and file (never the key): INVALID_ARGUMENT for a
// certificate without a key or a key without a certificate, a client CA without
// TLS, or files that do not hold what they should (see ValidateServerTlsConfig);
// NOT_FOUND / PERMISSION_DENIED for files that cannot be read. Blocks on the file
// system.
absl::StatusOr<std::optional<ServerTlsConfig>> LoadServerTlsConfig(
    const ServerTlsFiles& files);

// Checks with OpenSSL what gRPC would otherwise only find when the port is opened,
// with a vaguer message: the chain holds at least one PEM certificate, the key is a
// PEM private key that matches the first certificate, that certificate is valid now
// (not expired, not yet to come), and client_ca_pem, when set, holds at least one
// certificate. Errors: INVALID_ARGUMENT saying which part is wrong.
absl::Status ValidateServerTlsConfig(const ServerTlsConfig& config);

// The credentials of the listening port: insecure for nullopt; otherwise TLS (1.2 or
// newer, gRPC's floor) with `config`'s certificate and, when config->client_ca_pem is
// set, client certificates required and verified against it. `config` must have
// passed ValidateServerTlsConfig().
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const std::optional<ServerTlsConfig>& config);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_SERVER_CREDENTIALS_H_
