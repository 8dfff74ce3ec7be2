/*
 * Generates text with the edgeq C API (libedgeq.a, targets/capi), the same
 * loop as the host's `edgeq run`, so that their outputs can be compared byte
 * for byte (scripts/test-capi.sh):
 *
 *   generate MODEL.eqf [-n N] [--ctx C] [--kv f32|f16|q8] [--acts q8|f32]
 *            [--kernels auto|scalar] [--temp T] [--top-p P] [--seed S]
 *            [--prompt TEXT] [--show-tokens]
 *
 * stdout: the prompt (without BOS), then each generated piece, then "\n";
 * stderr: the API checks below, "tokens: [..]" with --show-tokens (as
 * `edgeq run --show-tokens` prints them), and a summary line.
 *
 * Before generating it checks the header against the library (handle
 * sizes, error messages) and a few error paths (misaligned image, NULL
 * arguments, arena too small, bad token, logits before the first feed).
 * Exit status: 0 on success, 1 on any failure.
 */
#include "edgeq.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(edgeq_model) == EDGEQ_MODEL_SIZE, "edgeq_model size");
_Static_assert(sizeof(edgeq_session) == EDGEQ_SESSION_SIZE, "edgeq_session size");
_Static_assert(sizeof(edgeq_sampler) == EDGEQ_SAMPLER_SIZE, "edgeq_sampler size");
_Static_assert(sizeof(edgeq_model_info) == 48, "edgeq_model_info layout");

static int failures = 0;

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "generate.c:%d: check failed: %s\n", __LINE__, #cond); \
            failures++;                                                         \
        }                                                                       \
    } while (0)

/* Calls an API function; on failure prints its error and exits. */
#define TRY(call)                                                                            \
    do {                                                                                     \
        int rc_ = (call);                                                                    \
        if (rc_ != EDGEQ_OK) {                                                               \
            fprintf(stderr, "generate.c:%d: %s: %s (%d)\n", __LINE__, #call, edgeq_strerror(rc_), rc_); \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static void *alloc64(size_t n) {
    size_t rounded = (n + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        perror(path);
        exit(1);
    }
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        perror(path);
        exit(1);
    }
    uint8_t *buf = alloc64((size_t)size);
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "%s: short read\n", path);
        exit(1);
    }
    fclose(f);
    *len = (size_t)size;
    return buf;
}

/* Writes the bytes of `token` after `prev` to stdout. */
static void put_piece(const edgeq_model *m, uint32_t prev, uint32_t token) {
    char piece[64];
    size_t n = 0;
    int rc = edgeq_detokenize_piece(m, prev, token, piece, sizeof piece, &n);
    if (rc == EDGEQ_ERR_BUFFER_TOO_SMALL) {
        char *big = malloc(n + 1);
        if (!big) {
            exit(1);
        }
        TRY(edgeq_detokenize_piece(m, prev, token, big, n + 1, &n));
        fwrite(big, 1, n, stdout);
        free(big);
    } else if (rc == EDGEQ_OK) {
        CHECK(n < sizeof piece && piece[n] == '\0');
        fwrite(piece, 1, n, stdout);
    }
    /* (an invalid token prints nothing, as in edgeq run) */
}

/* The header's promises and some error paths. */
static void check_api(const uint8_t *image, size_t len, const edgeq_model *m) {
    CHECK(edgeq_model_size() <= sizeof(edgeq_model));
    CHECK(edgeq_session_size() <= sizeof(edgeq_session));
    CHECK(edgeq_sampler_size() <= sizeof(edgeq_sampler));
    CHECK(strcmp(edgeq_strerror(EDGEQ_OK), "ok") == 0);
    for (int c = EDGEQ_ERR_INTERNAL; c < EDGEQ_OK; c++) {
        CHECK(edgeq_strerror(c) != NULL && strncmp(edgeq_strerror(c), "unknown", 7) != 0);
    }
    CHECK(strncmp(edgeq_strerror(-999), "unknown", 7) == 0);

    edgeq_model bad;
    /* A misaligned copy of the image. */
    uint8_t *copy = alloc64(len + 1);
    memcpy(copy + 1, image, len);
    CHECK(edgeq_model_open(copy + 1, len, &bad) == EDGEQ_ERR_ALIGN);
    free(copy);
    CHECK(edgeq_model_open(NULL, len, &bad) == EDGEQ_ERR_NULL);
    CHECK(edgeq_model_open(image, len, NULL) == EDGEQ_ERR_NULL);
    CHECK(edgeq_model_open(image, len / 2, &bad) == EDGEQ_ERR_FORMAT);
    edgeq_model_info info;
    CHECK(edgeq_model_get_info(&bad, &info) == EDGEQ_ERR_HANDLE);

    size_t need = 0;
    CHECK(edgeq_arena_bytes(m, 0, 1, EDGEQ_KV_F32, &need) == EDGEQ_ERR_INVALID_ARG);
    CHECK(edgeq_arena_bytes(m, 16, 1, 3, &need) == EDGEQ_ERR_INVALID_ARG);
    CHECK(edgeq_arena_bytes(m, 16, 1, EDGEQ_KV_F32, NULL) == EDGEQ_ERR_NULL);
    TRY(edgeq_arena_bytes(m, 16, 1, EDGEQ_KV_Q8, &need));
    uint8_t *arena = alloc64(need);
    edgeq_session s;
    CHECK(edgeq_session_init(&s, m, arena, need - 1, 16, 1, EDGEQ_KV_Q8) == EDGEQ_ERR_ARENA_TOO_SMALL);
    CHECK(edgeq_feed(&s, NULL, 0) == EDGEQ_ERR_HANDLE);
    TRY(edgeq_session_init(&s, m, arena, need, 16, 1, EDGEQ_KV_Q8));
    const float *logits = NULL;
    size_t n = 0;
    uint32_t tok = 0;
    CHECK(edgeq_logits(&s, &logits, &n) == EDGEQ_ERR_NO_LOGITS);
    CHECK(edgeq_sample(&s, NULL, &tok) == EDGEQ_ERR_NO_LOGITS);
    TRY(edgeq_model_get_info(m, &info));
    uint32_t oov = info.vocab_size;
    CHECK(edgeq_feed(&s, &oov, 1) == EDGEQ_ERR_BAD_TOKEN);
    uint32_t many[17] = {0};
    CHECK(edgeq_feed(&s, many, 17) == EDGEQ_ERR_CONTEXT_FULL);
    uint32_t pos = 99;
    TRY(edgeq_session_pos(&s, &pos, NULL));
    CHECK(pos == 0);
    /* Greedy sampling is the argmax of edgeq_logits. */
    uint32_t bos = info.bos_id;
    TRY(edgeq_feed(&s, &bos, 1));
    TRY(edgeq_logits(&s, &logits, &n));
    CHECK(n == info.vocab_size);
    size_t best = 0;
    for (size_t i = 1; i < n; i++) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    TRY(edgeq_sample(&s, NULL, &tok));
    CHECK(tok == best);
    uint32_t ids[8];
    size_t k = 0;
    CHECK(edgeq_tokenize(m, "\xff", 1, 0, ids, 8, &k) == EDGEQ_ERR_UTF8);
    free(arena);
}

static int kv_arg(const char *s) {
    if (strcmp(s, "f32") == 0) return EDGEQ_KV_F32;
    if (strcmp(s, "f16") == 0) return EDGEQ_KV_F16;
    if (strcmp(s, "q8") == 0) return EDGEQ_KV_Q8;
    fprintf(stderr, "--kv: f32, f16 or q8\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *path = NULL, *prompt = "", *kernels = "auto";
    long tokens = 128, ctx = 0;
    int kv = EDGEQ_KV_F32, acts = EDGEQ_ACTS_Q8, show_tokens = 0;
    float temp = 0.8f, top_p = 0.9f;
    unsigned long long seed = 42;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (strcmp(a, "-n") == 0 && v) tokens = strtol(v, NULL, 10);
        else if (strcmp(a, "--ctx") == 0 && v) ctx = strtol(v, NULL, 10);
        else if (strcmp(a, "--kv") == 0 && v) kv = kv_arg(v);
        else if (strcmp(a, "--acts") == 0 && v) acts = strcmp(v, "f32") == 0 ? EDGEQ_ACTS_F32 : EDGEQ_ACTS_Q8;
        else if (strcmp(a, "--kernels") == 0 && v) kernels = v;
        else if (strcmp(a, "--temp") == 0 && v) temp = strtof(v, NULL);
        else if (strcmp(a, "--top-p") == 0 && v) top_p = strtof(v, NULL);
        else if (strcmp(a, "--seed") == 0 && v) seed = strtoull(v, NULL, 10);
        else if (strcmp(a, "--prompt") == 0 && v) prompt = v;
        else {
            takes = 0;
            if (strcmp(a, "--show-tokens") == 0) show_tokens = 1;
            else if (a[0] != '-' && !path) path = a;
            else {
                fprintf(stderr, "usage: generate MODEL.eqf [-n N] [--ctx C] [--kv f32|f16|q8] [--acts q8|f32] "
                                "[--kernels auto|scalar] [--temp T] [--top-p P] [--seed S] [--prompt TEXT] [--show-tokens]\n");
                return 2;
            }
        }
        i += takes;
    }
    if (!path || tokens < 0) {
        fprintf(stderr, "usage: generate MODEL.eqf [options] (see the source)\n");
        return 2;
    }
    if (strcmp(kernels, "scalar") == 0) {
        TRY(edgeq_set_kernels(EDGEQ_KERNELS_SCALAR));
    } else if (strcmp(kernels, "auto") == 0) {
        TRY(edgeq_set_kernels(EDGEQ_KERNELS_AUTO));
    } else {
        fprintf(stderr, "--kernels: auto or scalar\n");
        return 2;
    }

    size_t len = 0;
    uint8_t *image = read_file(path, &len);
    static edgeq_model model; /* must stay in place while sessions use it */
    TRY(edgeq_model_open(image, len, &model));
    check_api(image, len, &model);
    edgeq_model_info info;
    TRY(edgeq_model_get_info(&model, &info));

    /* The prompt: BOS as the tokenizer says, and always for an empty one. */
    size_t plen = strlen(prompt), n_prompt = 0;
    uint32_t *ids = malloc((plen + 3) * sizeof *ids);
    if (!ids) return 1;
    int add_bos = info.add_bos || plen == 0;
    int rc = edgeq_tokenize(&model, prompt, plen, add_bos, ids, plen + 3, &n_prompt);
    if (rc == EDGEQ_ERR_TOKENIZER && add_bos) { /* no BOS token in the vocabulary */
        rc = edgeq_tokenize(&model, prompt, plen, 0, ids, plen + 3, &n_prompt);
    }
    TRY(rc);
    if (n_prompt == 0) {
        fprintf(stderr, "empty prompt and no BOS token\n");
        return 1;
    }
    uint32_t max_seq = ctx > 0 ? (uint32_t)ctx : (info.max_seq_len < 2048 ? info.max_seq_len : 2048);
    if (max_seq > info.max_seq_len) max_seq = info.max_seq_len;
    if (n_prompt >= max_seq) {
        fprintf(stderr, "prompt of %zu tokens does not fit the context of %u\n", n_prompt, max_seq);
        return 1;
    }
    uint32_t batch = (uint32_t)(n_prompt < 512 ? n_prompt : 512);

    size_t need = 0;
    TRY(edgeq_arena_bytes(&model, max_seq, batch, kv, &need));
    uint8_t *arena = alloc64(need);
    edgeq_session s;
    edgeq_sampler sampler;
    TRY(edgeq_session_init(&s, &model, arena, need, max_seq, batch, kv));
    TRY(edgeq_session_set_acts(&s, acts));
    TRY(edgeq_sampler_init(&sampler, temp, top_p, (uint64_t)seed));

    /* Echo the prompt (BOS prints nothing), feed it, then generate. */
    uint32_t prev = EDGEQ_NO_TOKEN;
    for (size_t i = 0; i < n_prompt; i++) {
        put_piece(&model, prev, ids[i]);
        prev = ids[i];
    }
    fflush(stdout);
    TRY(edgeq_feed(&s, ids, n_prompt));
    uint32_t *generated = malloc(((size_t)tokens + 1) * sizeof *generated);
    if (!generated) return 1;
    size_t n_gen = 0;
    for (long i = 0; i < tokens; i++) {
        uint32_t next = 0;
        TRY(edgeq_sample(&s, &sampler, &next));
        if (next == info.eos_id || next == info.bos_id) {
            break;
        }
        put_piece(&model, prev, next);
        fflush(stdout);
        generated[n_gen++] = next;
        prev = next;
        uint32_t pos = 0, max = 0;
        TRY(edgeq_session_pos(&s, &pos, &max));
        if (pos >= max) {
            fprintf(stderr, "\n[context of %u tokens full]\n", max);
            break;
        }
        TRY(edgeq_feed(&s, &next, 1));
    }
    printf("\n");
    if (show_tokens) {
        fprintf(stderr, "tokens: [");
        for (size_t i = 0; i < n_prompt + n_gen; i++) {
            fprintf(stderr, "%s%u", i ? ", " : "", i < n_prompt ? ids[i] : generated[i - n_prompt]);
        }
        fprintf(stderr, "]\n");
    }
    fprintf(stderr, "edgeq %s (kernels %s): prompt %zu tokens, generated %zu, arena %zu bytes, API checks %s\n",
            edgeq_version(), edgeq_kernels_name(), n_prompt, n_gen, need, failures ? "FAILED" : "ok");
    free(generated);
    free(ids);
    free(arena);
    free(image);
    return failures ? 1 : 0;
}
