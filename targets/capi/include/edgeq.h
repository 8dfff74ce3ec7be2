/*
 * edgeq.h: the C API of the edgeq runtime (libedgeq.a, built from
 * targets/capi; see docs/TARGETS.md, "C API and kernel modules").
 *
 * Runs a Llama-family model straight from an EQF image in memory, with no
 * allocator: the caller provides the image, the handles and one arena per
 * session, sized up front by edgeq_arena_bytes().
 *
 *   edgeq_model m;  edgeq_session s;  size_t need;  uint32_t tok;
 *   edgeq_model_open(image, image_len, &m);            // image 64-byte aligned
 *   edgeq_arena_bytes(&m, 128, 1, EDGEQ_KV_F32, &need);
 *   edgeq_session_init(&s, &m, arena, need, 128, 1, EDGEQ_KV_F32);
 *   edgeq_feed(&s, prompt, n_prompt);
 *   edgeq_sample(&s, NULL, &tok);                      // NULL sampler: greedy
 *   edgeq_feed(&s, &tok, 1);  ...
 *
 * Every function that can fail returns EDGEQ_OK (0) or a negative
 * EDGEQ_ERR_* code (edgeq_strerror() names it), after checking its
 * arguments: NULL pointers, alignment, ranges, sizes, UTF-8, handles that
 * were never initialised (or whose initialisation failed). No call panics,
 * allocates, blocks, or keeps global state, except edgeq_set_kernels().
 *
 * Lifetimes (the library cannot check these):
 *  - a model reads its weights from the image on every call: the image
 *    stays valid and unmodified while the model or any session on it is
 *    used;
 *  - a session keeps a pointer to its edgeq_model struct and to its arena:
 *    both stay valid, at the same address and otherwise untouched while
 *    the session is used (do not copy, move, reopen or free them);
 *  - pointers returned by edgeq_logits() are valid until the next
 *    edgeq_feed(), edgeq_session_reset() or edgeq_session_init() on that
 *    session.
 * Nothing needs closing: when done, free the memory you provided.
 *
 * Threads: a session (with its sampler) is used by one thread at a time;
 * several sessions, on any threads, may share one model.
 *
 * Floating point: edgeq_sampler_init() takes floats and edgeq_logits()
 * hands out a pointer to floats; everything else is integers and pointers,
 * and edgeq_sampler_init_milli() replaces edgeq_sampler_init() for code
 * built without an FPU (a Linux kernel module). Define EDGEQ_NO_FLOAT to
 * hide edgeq_sampler_init().
 */
#ifndef EDGEQ_H
#define EDGEQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Error codes ------------------------------------------------------ */

#define EDGEQ_OK 0
/** A required pointer argument is NULL. */
#define EDGEQ_ERR_NULL (-1)
/** An argument is out of range (unknown enum value, zero size, NaN, ...). */
#define EDGEQ_ERR_INVALID_ARG (-2)
/** Misaligned buffer or handle (model image: 64 bytes; arena: 4 bytes). */
#define EDGEQ_ERR_ALIGN (-3)
/** The model image is malformed or fails validation (checksums included). */
#define EDGEQ_ERR_FORMAT (-4)
/** The model has no usable tokenizer section. */
#define EDGEQ_ERR_NO_TOKENIZER (-5)
/** The handle was never initialised, or its initialisation failed. */
#define EDGEQ_ERR_HANDLE (-6)
/** The arena is smaller than edgeq_arena_bytes() reports. */
#define EDGEQ_ERR_ARENA_TOO_SMALL (-7)
/** The tokens do not fit the session's remaining context. */
#define EDGEQ_ERR_CONTEXT_FULL (-8)
/** A token id outside the vocabulary. */
#define EDGEQ_ERR_BAD_TOKEN (-9)
/** An output buffer is too small. */
#define EDGEQ_ERR_BUFFER_TOO_SMALL (-10)
/** Text is not valid UTF-8. */
#define EDGEQ_ERR_UTF8 (-11)
/** No logits yet: feed at least one token first. */
#define EDGEQ_ERR_NO_LOGITS (-12)
/** The tokenizer cannot encode the text (no BOS token, no byte fallback). */
#define EDGEQ_ERR_TOKENIZER (-13)
/** A size does not fit in size_t. */
#define EDGEQ_ERR_OVERFLOW (-14)
/** The kernel implementation asked for is not available here. */
#define EDGEQ_ERR_UNSUPPORTED (-15)
/** An internal invariant failed (a bug in edgeq: please report). */
#define EDGEQ_ERR_INTERNAL (-16)

/* ---- Enumerations ------------------------------------------------------ */

/** KV cache precision (the `kv` arguments). */
#define EDGEQ_KV_F32 0 /**< f32: exact, 4 bytes per value (edgeq run --kv f32) */
#define EDGEQ_KV_F16 1 /**< f16: 2 bytes per value */
#define EDGEQ_KV_Q8 2  /**< int8 with an f16 scale per head vector: ~1 byte per value */

/** Activations of integer-weight layers (edgeq_session_set_acts). */
#define EDGEQ_ACTS_Q8 0  /**< 8-bit per 32-block, int8 dot products (the default; edgeq run --acts q8) */
#define EDGEQ_ACTS_F32 1 /**< exact f32 */

/** Kernel implementations (edgeq_set_kernels). */
#define EDGEQ_KERNELS_AUTO 0   /**< the best this CPU and build support */
#define EDGEQ_KERNELS_SCALAR 1 /**< the reference: bit-identical results on every machine */

/** "No token": the `prev` of the first piece. */
#define EDGEQ_NO_TOKEN UINT32_MAX

/* ---- Handles ----------------------------------------------------------- */

/* Opaque, caller-allocated, fixed size (stack, static, or inside your own
 * structs; 1 KiB each for model and session: on a small kernel stack prefer
 * a static or an allocation). The library checks at compile time that what
 * it stores fits, and edgeq_*_size() report how much of them it uses. */
#define EDGEQ_MODEL_SIZE 1024
#define EDGEQ_SESSION_SIZE 1024
#define EDGEQ_SAMPLER_SIZE 64

/** A validated model and its tokenizer. */
typedef struct edgeq_model {
    uint64_t opaque[EDGEQ_MODEL_SIZE / 8];
} edgeq_model;

/** A decoding session: KV cache and scratch in a caller arena. */
typedef struct edgeq_session {
    uint64_t opaque[EDGEQ_SESSION_SIZE / 8];
} edgeq_session;

/** Sampler settings and RNG state. */
typedef struct edgeq_sampler {
    uint64_t opaque[EDGEQ_SAMPLER_SIZE / 8];
} edgeq_sampler;

/** What edgeq_model_get_info() reports. */
typedef struct edgeq_model_info {
    uint32_t vocab_size;
    uint32_t max_seq_len; /**< longest context; larger max_seq arguments are clamped to it */
    uint32_t dim;
    uint32_t hidden_dim;
    uint32_t n_layers;
    uint32_t n_heads;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t bos_id;        /**< BOS of the model config (edgeq run stops at BOS or EOS) */
    uint32_t eos_id;        /**< EOS of the model config */
    uint32_t has_tokenizer; /**< 1 when edgeq_tokenize / edgeq_detokenize_piece work */
    uint32_t add_bos;       /**< 1 when the tokenizer wants BOS before a prompt */
} edgeq_model_info;

/** Bytes of an edgeq_model the library uses (<= sizeof(edgeq_model)). */
size_t edgeq_model_size(void);
/** Bytes of an edgeq_session the library uses (<= sizeof(edgeq_session)). */
size_t edgeq_session_size(void);
/** Bytes of an edgeq_sampler the library uses (<= sizeof(edgeq_sampler)). */
size_t edgeq_sampler_size(void);

/* ---- Library ----------------------------------------------------------- */

/** The library version ("0.1.0"), a static string. */
const char *edgeq_version(void);

/** A static, NUL-terminated description of an error code (any int). */
const char *edgeq_strerror(int code);

/**
 * Chooses the matrix-product kernels for the whole process:
 * EDGEQ_KERNELS_AUTO (default: AVX2/FMA where the CPU and OS have it on
 * hosted x86_64, NEON on aarch64 with an FPU, else scalar) or
 * EDGEQ_KERNELS_SCALAR (bit-identical to `edgeq run --kernels scalar` and to
 * every firmware build). Not synchronised with running calls: set it
 * before sessions run. EDGEQ_ERR_INVALID_ARG for other values.
 */
int edgeq_set_kernels(int kernels);

/** The kernel implementation in use ("scalar", "x86_64-avx2-fma-f16c", ...), a static string. */
const char *edgeq_kernels_name(void);

/* ---- Models ------------------------------------------------------------ */

/**
 * Validates the EQF image buf[0..len) (header, sections, every tensor
 * against the config, CRCs) and its tokenizer, and initialises *out.
 * buf must be 64-byte aligned (EDGEQ_ERR_ALIGN otherwise); it is read in
 * place, never copied, and must outlive the model and its sessions.
 * A model without a valid tokenizer still opens (has_tokenizer = 0).
 * On failure *out is marked invalid.
 */
int edgeq_model_open(const uint8_t *buf, size_t len, edgeq_model *out);

/** Fills *out with the model's dimensions and special tokens. */
int edgeq_model_get_info(const edgeq_model *model, edgeq_model_info *out);

/**
 * Writes to *out the arena bytes a session needs for a context of max_seq
 * positions (clamped to the model's max_seq_len), batches of at most
 * max_batch tokens per forward pass (clamped to max_seq; edgeq_feed splits
 * longer inputs) and a KV cache of precision kv (EDGEQ_KV_*). Includes a
 * copy of the logits for the sampler. max_seq and max_batch must be >= 1.
 */
int edgeq_arena_bytes(const edgeq_model *model, uint32_t max_seq, uint32_t max_batch, int kv, size_t *out);

/* ---- Sessions ---------------------------------------------------------- */

/**
 * Initialises *session on model in the caller's arena[0..arena_len):
 * arena_len at least what edgeq_arena_bytes() reports for the same
 * max_seq, max_batch and kv; arena 4-byte aligned (64 recommended). The
 * arena is zeroed and then owned by the session; model (the struct, at its
 * address) and arena must outlive it. Activations start at EDGEQ_ACTS_Q8.
 * Re-initialising a session is allowed (it forgets everything).
 * On failure *session is marked invalid.
 */
int edgeq_session_init(edgeq_session *session, const edgeq_model *model, uint8_t *arena, size_t arena_len,
                       uint32_t max_seq, uint32_t max_batch, int kv);

/** Sets the activation precision (EDGEQ_ACTS_*) from the next feed on. */
int edgeq_session_set_acts(edgeq_session *session, int acts);

/**
 * Feeds tokens[0..n) at the session's position and keeps the logits after
 * the last one. First checks that every id is in the vocabulary
 * (EDGEQ_ERR_BAD_TOKEN) and that all n fit the context
 * (EDGEQ_ERR_CONTEXT_FULL): then nothing is fed. tokens may be NULL when
 * n == 0 (which does nothing).
 */
int edgeq_feed(edgeq_session *session, const uint32_t *tokens, size_t n);

/**
 * The logits after the last token fed: *out points at *n floats (the
 * vocabulary) inside the arena, valid until the next edgeq_feed,
 * edgeq_session_reset or edgeq_session_init on this session.
 * EDGEQ_ERR_NO_LOGITS before the first feed (and after a reset).
 */
int edgeq_logits(const edgeq_session *session, const float **out, size_t *n);

/** The position (tokens fed since init or reset) and the context; either pointer may be NULL. */
int edgeq_session_pos(const edgeq_session *session, uint32_t *pos, uint32_t *max_seq);

/** Forgets the context: the next token fed goes to position 0. */
int edgeq_session_reset(edgeq_session *session);

/* ---- Sampling ---------------------------------------------------------- */

#ifndef EDGEQ_NO_FLOAT
/**
 * Initialises a sampler: temperature 0 is greedy (argmax); above 0, the
 * softmax at that temperature restricted to the nucleus of mass top_p
 * (top_p <= 0 or >= 1: no restriction), drawn with a xorshift RNG seeded by
 * seed: the sampler of `edgeq run --temp T --top-p P --seed S`.
 * EDGEQ_ERR_INVALID_ARG for a NaN, negative or infinite temperature or a
 * NaN top_p.
 */
int edgeq_sampler_init(edgeq_sampler *sampler, float temperature, float top_p, uint64_t seed);
#endif

/**
 * edgeq_sampler_init() with temperature and top_p in thousandths (800 is
 * exactly 0.8f), for code without floats. Values >= 2^24 are rejected.
 */
int edgeq_sampler_init_milli(edgeq_sampler *sampler, uint32_t temperature_milli, uint32_t top_p_milli,
                             uint64_t seed);

/**
 * Picks the next token from the session's logits into *token; sampler NULL
 * means greedy (argmax, the first on ties). Advances the sampler's RNG when
 * it draws. The logits stay as they are and nothing is fed: feed the token
 * to continue. EDGEQ_ERR_NO_LOGITS before the first feed.
 */
int edgeq_sample(edgeq_session *session, edgeq_sampler *sampler, uint32_t *token);

/* ---- Tokenizer --------------------------------------------------------- */

/**
 * Encodes text[0..len) (UTF-8; no NUL needed; NULL when len == 0), preceded
 * by BOS when add_bos is non-zero, into out[0..cap); *n gets the count.
 * out is also the encoder's work space: cap >= len + 3 always suffices,
 * a smaller cap may fail with EDGEQ_ERR_BUFFER_TOO_SMALL even when the
 * result would fit.
 */
int edgeq_tokenize(const edgeq_model *model, const char *text, size_t len, int add_bos, uint32_t *out, size_t cap,
                   size_t *n);

/**
 * The bytes of token `token` following token `prev` (EDGEQ_NO_TOKEN at the
 * start), as `edgeq run` prints them: control tokens give none, byte tokens
 * one raw byte, and after BOS a SentencePiece piece loses its leading
 * space. Writes them to out[0..cap) and their count to *n, then a NUL if
 * cap > *n (not counted). A piece is bytes, not text: a UTF-8 character
 * may span tokens. If cap < the piece's length: EDGEQ_ERR_BUFFER_TOO_SMALL,
 * *n = the length needed, out untouched.
 */
int edgeq_detokenize_piece(const edgeq_model *model, uint32_t prev, uint32_t token, char *out, size_t cap,
                           size_t *n);

#ifdef __cplusplus
}
#endif

#endif /* EDGEQ_H */
