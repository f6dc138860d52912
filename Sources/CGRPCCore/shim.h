// The gRPC C core (Debian libgrpc-dev 1.51) as one Swift module. No logic lives here:
// only the headers, in a safe order, and static inline stand-ins for macros Swift cannot import.
#ifndef CGRPCCORE_SHIM_H
#define CGRPCCORE_SHIM_H

// libc first: grpc's port_platform.h defines _GNU_SOURCE, which changes fd_set; if a libc header
// is seen first without it, debug builds fail on '__fds_bits' (docs/grpc-core.md).
#include <features.h>
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/types.h>
#include <sys/select.h>
#include <pthread.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <grpc/support/log.h>

/// GRPC_SLICE_START_PTR: inline slices keep their bytes inside the struct, so `s` must be stable.
static inline uint8_t *cgrpc_slice_start(grpc_slice *s) {
    return GRPC_SLICE_START_PTR(*s);
}

/// GRPC_SLICE_LENGTH.
static inline size_t cgrpc_slice_length(const grpc_slice *s) {
    return GRPC_SLICE_LENGTH(*s);
}

/// GRPC_PROPAGATE_DEFAULTS.
static inline uint32_t cgrpc_propagate_defaults(void) {
    return GRPC_PROPAGATE_DEFAULTS;
}

/// The argument keys we set, as C strings with static storage.
static inline const char *cgrpc_arg_max_receive_message_length(void) {
    return GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
}
static inline const char *cgrpc_arg_max_send_message_length(void) {
    return GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
}
static inline const char *cgrpc_arg_allow_reuseport(void) {
    return GRPC_ARG_ALLOW_REUSEPORT;
}
static inline const char *cgrpc_arg_use_local_subchannel_pool(void) {
    return GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
}
static inline const char *cgrpc_arg_max_reconnect_backoff_ms(void) {
    return GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
}

/// The header declares these with `()` (no prototype), which Swift does not import.
static inline grpc_channel_credentials *cgrpc_insecure_channel_credentials(void) {
    return grpc_insecure_credentials_create();
}
static inline grpc_server_credentials *cgrpc_insecure_server_credentials(void) {
    return grpc_insecure_server_credentials_create();
}

#endif
