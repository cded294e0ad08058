/*
 * env_cmd — `muxd env`: shell commands (sh, fish or csh) that point clients
 * at a muxd and make them trust its CA. With a daemon running, its CA comes
 * from /ca.pem and the bundle (system store + that CA) is written to the
 * user's cache directory; without one, the CA of the user's own state
 * directory is used (and created).
 */
#ifndef MUXD_ENV_CMD_H
#define MUXD_ENV_CMD_H

struct config;

/* shell: "sh", "fish", "csh" or NULL (from $SHELL). Returns the exit status. */
int env_cmd(const struct config *cfg, const char *shell);

#endif
