#include "tests/testing/test_certs.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

namespace clipserve::testing {
namespace {

void Check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "test_certs: %s failed\n", what);
  ERR_print_errors_fp(stderr);
  std::abort();
}

struct Deleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
template <typename T>
using Ptr = std::unique_ptr<T, Deleter>;

Ptr<EVP_PKEY> NewKey() {
  Ptr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  Check(key != nullptr, "EVP_EC_gen");
  return key;
}

std::string ToPem(X509* cert) {
  Ptr<BIO> bio(BIO_new(BIO_s_mem()));
  Check(PEM_write_bio_X509(bio.get(), cert) == 1, "PEM_write_bio_X509");
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

std::string ToPem(EVP_PKEY* key) {
  Ptr<BIO> bio(BIO_new(BIO_s_mem()));
  Check(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) ==
            1,
        "PEM_write_bio_PrivateKey");
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

Ptr<X509> FromPem(const std::string& pem) {
  Ptr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Ptr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  Check(cert != nullptr, "PEM_read_bio_X509");
  return cert;
}

Ptr<EVP_PKEY> KeyFromPem(const std::string& pem) {
  Ptr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Ptr<EVP_PKEY> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  Check(key != nullptr, "PEM_read_bio_PrivateKey");
  return key;
}

void AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  Ptr<X509_EXTENSION> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  Check(ext != nullptr, "X509V3_EXT_conf_nid");
  Check(X509_add_ext(cert, ext.get(), -1) == 1, "X509_add_ext");
}

long NextSerial() {
  static long serial = 1000;
  return ++serial;
}

Ptr<X509> NewCert(EVP_PKEY* key, const std::string& common_name, long from_hours,
                  long for_hours) {
  Ptr<X509> cert(X509_new());
  Check(cert != nullptr, "X509_new");
  Check(X509_set_version(cert.get(), 2) == 1, "X509_set_version");
  Check(ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), NextSerial()) == 1, "serial");
  Check(X509_gmtime_adj(X509_getm_notBefore(cert.get()), from_hours * 3600) != nullptr,
        "notBefore");
  Check(X509_gmtime_adj(X509_getm_notAfter(cert.get()),
                        (from_hours + for_hours) * 3600) != nullptr,
        "notAfter");
  X509_NAME* name = X509_get_subject_name(cert.get());
  Check(X509_NAME_add_entry_by_txt(
            name, "CN", MBSTRING_ASC,
            reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0) == 1,
        "CN");
  Check(X509_set_pubkey(cert.get(), key) == 1, "X509_set_pubkey");
  return cert;
}

}  // namespace

TestCert MakeCa(const std::string& common_name) {
  Ptr<EVP_PKEY> key = NewKey();
  Ptr<X509> cert = NewCert(key.get(), common_name, -1, 24 * 30);
  Check(X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) == 1,
        "issuer");
  AddExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE");
  AddExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  AddExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash");
  Check(X509_sign(cert.get(), key.get(), EVP_sha256()) > 0, "X509_sign");
  return {ToPem(cert.get()), ToPem(key.get())};
}

TestCert MakeLeaf(const TestCert& ca, const std::string& common_name,
                  const std::vector<std::string>& dns_names,
                  const std::vector<std::string>& ip_addresses, long valid_from_hours,
                  long valid_for_hours) {
  Ptr<X509> ca_cert = FromPem(ca.cert_pem);
  Ptr<EVP_PKEY> ca_key = KeyFromPem(ca.key_pem);
  Ptr<EVP_PKEY> key = NewKey();
  Ptr<X509> cert = NewCert(key.get(), common_name, valid_from_hours, valid_for_hours);
  Check(X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert.get())) == 1,
        "issuer");
  AddExtension(cert.get(), ca_cert.get(), NID_basic_constraints, "critical,CA:FALSE");
  AddExtension(cert.get(), ca_cert.get(), NID_key_usage,
               "critical,digitalSignature,keyEncipherment");
  AddExtension(cert.get(), ca_cert.get(), NID_ext_key_usage, "serverAuth,clientAuth");
  AddExtension(cert.get(), ca_cert.get(), NID_authority_key_identifier, "keyid:always");
  std::string san;
  for (const std::string& dns : dns_names)
    san += (san.empty() ? "" : ",") + ("DNS:" + dns);
  for (const std::string& ip : ip_addresses)
    san += (san.empty() ? "" : ",") + ("IP:" + ip);
  if (!san.empty()) AddExtension(cert.get(), ca_cert.get(), NID_subject_alt_name, san);
  Check(X509_sign(cert.get(), ca_key.get(), EVP_sha256()) > 0, "X509_sign");
  return {ToPem(cert.get()), ToPem(key.get())};
}

TestPki MakeTestPki() {
  TestPki pki;
  pki.ca = MakeCa("clipserve test CA");
  pki.server = MakeLeaf(pki.ca, "localhost", {"localhost"}, {"127.0.0.1"});
  pki.client = MakeLeaf(pki.ca, "clipserve test client", {}, {});
  pki.other_ca = MakeCa("unrelated test CA");
  pki.other_server = MakeLeaf(pki.other_ca, "localhost", {"localhost"}, {"127.0.0.1"});
  pki.other_client = MakeLeaf(pki.other_ca, "unrelated test client", {}, {});
  return pki;
}

}  // namespace clipserve::testing
