/* sd3: Stable Diffusion 3 / 3.5 inference, C API (libsd3).
 *
 * Open a model set once, generate any number of images into caller buffers, free it.
 *
 *   sd3_model_options mo;  sd3_model_options_init(&mo);
 *   const char* files[] = {"sd3_medium_incl_clips_t5xxlfp16.safetensors"};
 *   mo.model_paths = files;  mo.n_model_paths = 1;
 *   sd3_model* m = NULL;
 *   if (sd3_model_open(&mo, &m) != SD3_OK) { puts(sd3_last_error()); ... }
 *   sd3_generate_options go;  sd3_generate_options_init(&go);
 *   go.prompt = "a cat";  go.width = go.height = 1024;  go.seed = 42;
 *   uint8_t* rgb = malloc(1024 * 1024 * 3);
 *   if (sd3_generate(m, &go, rgb, 1024 * 1024 * 3, NULL, NULL) != SD3_OK) ...
 *   sd3_model_free(m);
 *
 * Every function reports failure by status; the message (one line, naming the file, flag or
 * value at fault) is in sd3_last_error(), which is per thread. No function exits or aborts.
 */
#ifndef SD3_H
#define SD3_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SD3_API __attribute__((visibility("default")))
#else
#define SD3_API
#endif

/* 2: sd3_model_options.profile_ops (options structs grew: rebuild against this header). */
#define SD3_API_VERSION 2

typedef enum sd3_status {
  SD3_OK = 0,
  SD3_ERROR_INVALID_ARGUMENT = 1, /* a bad option value, size, or buffer */
  SD3_ERROR_MODEL = 2,            /* a file that cannot be read or used as a model */
  SD3_ERROR_CANCELLED = 3,        /* the progress callback asked to stop */
  SD3_ERROR_BACKEND = 4,          /* the compute backend failed (no GPU, out of memory, ...) */
  SD3_ERROR_INTERNAL = 5
} sd3_status;

typedef struct sd3_model sd3_model;

typedef struct sd3_model_options {
  const char* const* model_paths; /* -m files: single-file releases or component files */
  size_t n_model_paths;
  const char* clip_l; /* optional per-component files (NULL = find in model_paths) */
  const char* clip_g;
  const char* t5xxl;
  const char* vae;
  const char* clip_vocab; /* bpe_simple_vocab_16e6.txt.gz or vocab.json; NULL = look beside */
  const char* t5_model;   /* spiece.model; NULL = look beside the model files */
  const char* backend;    /* "cpu" (default) or "cuda" */
  int threads;            /* CPU threads, 0 = all cores */
  int free_encoders;      /* nonzero: drop text encoders after encoding each prompt */
  int no_t5;              /* nonzero: run without T5 (zeros in its place) */
  const char* preset;     /* sampler defaults: "sd3_medium", "sd35_large_turbo", ...; NULL */
  const char* unfused;    /* fusions to turn off: "adaln,attn,groupnorm,euler" or "all"; NULL */
  int profile_ops;        /* nonzero: time every op of each generation; sd3_last_run_json then
                             has "ops": [{"op", "calls", "ms"}], the most time first. The
                             profile is process-wide: one profiled generation at a time. */
} sd3_model_options;

typedef struct sd3_generate_options {
  const char* prompt;
  const char* negative_prompt; /* NULL or "" = unconditional */
  int width, height;           /* multiples of 16; 0 = 1024 */
  int steps;                   /* 0 = the model's default */
  float cfg_scale;             /* < 0 = default */
  float shift;                 /* <= 0 = default */
  const char* sampler;         /* "euler", "dpmpp_2m", "heun"; NULL = default */
  uint64_t seed;
  float slg_scale;             /* skip-layer guidance scale; < 0 = preset default, 0 = off */
  const int* skip_layers;      /* NULL = preset default */
  size_t n_skip_layers;
  float slg_start, slg_end;    /* fractions of the steps bounding it; < 0 = default */
  /* img2img: RGB8 pixels (row-major, 3 bytes a pixel) of width x height, or NULL. */
  const uint8_t* init_image;
  float strength; /* (0, 1]: fraction of the schedule run from the init image */
} sd3_generate_options;

typedef struct sd3_progress {
  const char* stage; /* "load_text", "encode", "load_mmdit", "sample", "load_vae", "decode" */
  int step;          /* sampling: steps done so far; other stages: 0 */
  int total;         /* sampling: number of steps; other stages: 0 */
  double stage_seconds;
} sd3_progress;

/* Called at each stage and after each sampling step; return nonzero to cancel. */
typedef int (*sd3_progress_fn)(const sd3_progress* progress, void* user);

SD3_API int sd3_api_version(void);
SD3_API void sd3_model_options_init(sd3_model_options* options);
SD3_API void sd3_generate_options_init(sd3_generate_options* options);

/* Opens the files and finds every component; weights are loaded on first use. */
SD3_API sd3_status sd3_model_open(const sd3_model_options* options, sd3_model** out);

/* Generates one image into rgb (width * height * 3 bytes, row-major RGB8). */
SD3_API sd3_status sd3_generate(sd3_model* model, const sd3_generate_options* options,
                                uint8_t* rgb, size_t rgb_size, sd3_progress_fn progress,
                                void* user);

/* JSON describing the last successful sd3_generate: the parameters it resolved (defaults
 * applied), stage timings in seconds and peak memory. Valid until the next call on model. */
SD3_API const char* sd3_last_run_json(const sd3_model* model);

/* JSON describing the opened model: components (arch, prefix, file), defaults, warnings. */
SD3_API const char* sd3_model_info_json(const sd3_model* model);

/* Writes RGB8 pixels as a PNG file, atomically (temporary file + rename), with optional
 * tEXt/iTXt chunks: n_text (keyword, value) pairs in text_keys / text_values (UTF-8). */
SD3_API sd3_status sd3_write_png(const char* path, const uint8_t* rgb, int width, int height,
                                 const char* const* text_keys, const char* const* text_values,
                                 size_t n_text);

/* Reads a PNG file (gray, palette, RGB or RGBA; alpha dropped) as RGB8. *rgb is allocated
 * with malloc and released by the caller with free(). */
SD3_API sd3_status sd3_read_png(const char* path, uint8_t** rgb, int* width, int* height);

/* The message of the last failure on this thread ("" if none). */
SD3_API const char* sd3_last_error(void);

SD3_API void sd3_model_free(sd3_model* model);

#ifdef __cplusplus
}
#endif

#endif /* SD3_H */
