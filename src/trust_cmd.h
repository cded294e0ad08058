/*
 * trust_cmd — `muxd trust [--remove]`: install (remove) the running muxd's
 * CA in the system trust store (/usr/local/share/ca-certificates/muxd.crt,
 * then update-ca-certificates) and in the user's NSS database
 * (~/.pki/nssdb, Chromium and Firefox) with certutil when it is installed.
 * For tests and packaging, MUXD_TRUST_ROOT prefixes the store's path and
 * MUXD_UPDATE_CA_CERTIFICATES replaces the update command (run by /bin/sh).
 */
#ifndef MUXD_TRUST_CMD_H
#define MUXD_TRUST_CMD_H

#include <stdbool.h>

struct config;

/* Prints one line per store and what changed in it; returns the exit
 * status: 0, or 1 when a store was refused (privileges) or failed. */
int trust_cmd(const struct config *cfg, bool remove);

#endif
