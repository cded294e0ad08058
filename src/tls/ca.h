/*
 * ca — muxd's local certificate authority, for TLS interception: an ECDSA
 * P-256 CA kept in state_dir (ca.pem 0644, ca.key 0600, written atomically,
 * never regenerated), leaf certificates issued on the fly per host name or
 * IP literal (one shared leaf key, a few days of validity, renewed before
 * expiry, kept in an LRU cache), and state_dir/ca-bundle.pem (the system
 * trust store plus the CA) for clients, and the session ticket key.
 * Owns: the CA key and certificate, the leaf key, the leaf cache, the
 * ticket key.
 */
#ifndef MUXD_TLS_CA_H
#define MUXD_TLS_CA_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>

struct local_ca;
struct local_ca_leaf;

/*
 * Load the CA from state_dir, creating it (and state_dir, mode 0700) when
 * neither ca.pem nor ca.key exists. Fails with a clear message in err when
 * only one of them exists, the key is unreadable or readable by group or
 * others (mode & 077), or key and certificate do not match. Also (re)writes
 * ca-bundle.pem when it is missing or older than the CA or the system store.
 */
struct local_ca *local_ca_open(const char *state_dir, unsigned leaf_cache_size, char *err,
                               size_t err_size);
void local_ca_free(struct local_ca *ca);

const char *local_ca_cert_path(const struct local_ca *ca);        /* state_dir/ca.pem */
const char *local_ca_bundle_path(const struct local_ca *ca);      /* state_dir/ca-bundle.pem */
const char *local_ca_pem(const struct local_ca *ca, size_t *len); /* the CA certificate */
/* "SHA256:AB:CD:..." (upper-case hex pairs). */
void local_ca_fingerprint(const struct local_ca *ca, char *out, size_t size);

/*
 * Server credentials for host (a DNS name, or an IP literal: then an IP SAN),
 * from the cache or freshly issued (*issued = true). The credentials carry
 * the leaf and the CA certificate as its chain. Reference counted: keep the
 * leaf until every TLS session using its credentials is gone.
 * NULL on failure (err says why).
 */
struct local_ca_leaf *local_ca_leaf_get(struct local_ca *ca, const char *host, bool *issued,
                                        char *err, size_t err_size);
gnutls_certificate_credentials_t local_ca_leaf_creds(const struct local_ca_leaf *leaf);
/* The master key for client session tickets of intercepted sessions (TLS
 * 1.3 and 1.2; random, in memory only: tickets do not survive a restart).
 * Made when the CA is opened and replaced by a new one on the first call a
 * day (24 h) later, or when the clock went back; a session copies it (GnuTLS
 * derives its ticket keys from it per 18 h window), so the pointer is valid
 * only until the next call. */
const gnutls_datum_t *local_ca_ticket_key(struct local_ca *ca);
void local_ca_leaf_put(struct local_ca_leaf *leaf);

#endif
