/*
 * A caller of the edgeq C API written the way kernel or firmware code is:
 * freestanding (no libc: <stddef.h> and <stdint.h> only), no floating point
 * (compiled with -mgeneral-regs-only and EDGEQ_NO_FLOAT, so the compiler
 * rejects any float that slips in), handles in statics, the arena and the
 * model image from the caller. scripts/test-capi.sh links it against the
 * bare-metal builds of libedgeq.a (x86_64-unknown-none,
 * aarch64-unknown-none-softfloat):
 *   - with --gc-sections, to list what the final link keeps (panic paths,
 *     floating-point registers);
 *   - with tests/c/kernel_main.c, a hosted harness, to run it (natively, and
 *     under qemu-aarch64) and compare its text with the host's.
 */
#include <stddef.h>
#include <stdint.h>

#include "edgeq.h"

static edgeq_model model;
static edgeq_session session;
static edgeq_sampler sampler;

/* Opens the image and reports the arena a session of max_seq positions needs. */
int edgeq_demo_open(const uint8_t *image, size_t len, uint32_t max_seq, size_t *arena_need) {
    int rc = edgeq_model_open(image, len, &model);
    if (rc != EDGEQ_OK) {
        return rc;
    }
    return edgeq_arena_bytes(&model, max_seq, 1, EDGEQ_KV_F32, arena_need);
}

/*
 * Generates up to n_tokens tokens greedily from BOS (stopping at BOS, EOS or
 * a full context, as `edgeq run --temp 0`) into text[0..cap) (NUL-terminated)
 * and ids[0..n_tokens + 1) (BOS first). Returns the number of ids written,
 * or a negative EDGEQ_ERR_* code.
 */
long edgeq_demo_generate(uint8_t *arena, size_t arena_len, uint32_t max_seq, uint32_t n_tokens, char *text,
                         size_t cap, uint32_t *ids) {
    edgeq_model_info info;
    uint32_t tok = 0, prev, pos = 0, max = 0;
    size_t n = 0, used = 0;
    long count = 0;
    int rc;

    if (cap == 0) {
        return EDGEQ_ERR_BUFFER_TOO_SMALL;
    }
    text[0] = '\0';
    if ((rc = edgeq_set_kernels(EDGEQ_KERNELS_SCALAR)) != EDGEQ_OK) return rc;
    if ((rc = edgeq_model_get_info(&model, &info)) != EDGEQ_OK) return rc;
    if ((rc = edgeq_session_init(&session, &model, arena, arena_len, max_seq, 1, EDGEQ_KV_F32)) != EDGEQ_OK) return rc;
    if ((rc = edgeq_session_set_acts(&session, EDGEQ_ACTS_Q8)) != EDGEQ_OK) return rc;
    /* temperature 0: greedy (the same as passing a NULL sampler) */
    if ((rc = edgeq_sampler_init_milli(&sampler, 0, 900, 42)) != EDGEQ_OK) return rc;
    if ((rc = edgeq_tokenize(&model, NULL, 0, 1, &tok, 1, &n)) != EDGEQ_OK) return rc;
    if (n != 1) return EDGEQ_ERR_INTERNAL;
    ids[count++] = tok;
    if ((rc = edgeq_feed(&session, &tok, 1)) != EDGEQ_OK) return rc;
    prev = tok;
    for (uint32_t i = 0; i < n_tokens; i++) {
        if ((rc = edgeq_sample(&session, &sampler, &tok)) != EDGEQ_OK) return rc;
        if (tok == info.eos_id || tok == info.bos_id) break;
        rc = edgeq_detokenize_piece(&model, prev, tok, text + used, cap - used, &n);
        if (rc != EDGEQ_OK) return rc;
        used += n;
        ids[count++] = tok;
        prev = tok;
        if ((rc = edgeq_session_pos(&session, &pos, &max)) != EDGEQ_OK) return rc;
        if (pos >= max) break;
        if ((rc = edgeq_feed(&session, &tok, 1)) != EDGEQ_OK) return rc;
    }
    return count;
}

/* Every other entry point, so that a --gc-sections link keeps all of them. */
const char *edgeq_demo_misc(size_t *sizes, const float **logits, size_t *n_logits) {
    sizes[0] = edgeq_model_size();
    sizes[1] = edgeq_session_size();
    sizes[2] = edgeq_sampler_size();
    edgeq_session_reset(&session);
    edgeq_logits(&session, logits, n_logits);
    edgeq_sample(&session, NULL, NULL);
    (void)edgeq_kernels_name();
    (void)edgeq_version();
    return edgeq_strerror(edgeq_set_kernels(EDGEQ_KERNELS_AUTO));
}
