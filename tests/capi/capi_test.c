/* The C API (include/sd3.h) driven from C: a tiny random-weight checkpoint made by
 * sd3-randckpt goes through open, generate (with progress and cancellation), the PNG helpers
 * and the error paths. Prints "N passed, M failed" and exits non-zero on any failure. */
#include <sd3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int g_passed = 0, g_failed = 0;

#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (cond) {                                            \
      ++g_passed;                                          \
    } else {                                               \
      ++g_failed;                                          \
      fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                        \
      fputc('\n', stderr);                                 \
    }                                                      \
  } while (0)

static const char* env_or(const char* name, const char* fallback) {
  const char* v = getenv(name);
  return (v && *v) ? v : fallback;
}

struct progress_log {
  int calls;
  int sample_steps;
  int cancel_at_step; /* > 0: cancel when sampling reaches it */
};

static int on_progress(const sd3_progress* p, void* user) {
  struct progress_log* log = (struct progress_log*)user;
  ++log->calls;
  if (strcmp(p->stage, "sample") == 0 && p->step > log->sample_steps) log->sample_steps = p->step;
  return log->cancel_at_step > 0 && strcmp(p->stage, "sample") == 0 &&
         p->step >= log->cancel_at_step;
}

int main(void) {
  char dir[] = "/tmp/sd3-capi-XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  char ckpt[512], cmd[2048], png[512], vocab[512], spm[512];
  snprintf(ckpt, sizeof ckpt, "%s/tiny.safetensors", dir);
  snprintf(png, sizeof png, "%s/out.png", dir);
  const char* tok = env_or("SD3_TOKENIZERS", SD3_DEFAULT_SHARED_DIR "/tokenizers");
  snprintf(vocab, sizeof vocab, "%s/clip/bpe_simple_vocab_16e6.txt.gz", tok);
  snprintf(spm, sizeof spm, "%s/t5/spiece.model", tok);
  if (access(vocab, R_OK) != 0 || access(spm, R_OK) != 0) {
    fprintf(stderr, "tokenizer data missing under %s (set SD3_TOKENIZERS)\n", tok);
    printf("0 passed, 1 failed\n");
    return 1;
  }
  snprintf(cmd, sizeof cmd,
           "'%s/sd3-randckpt' sd3_medium_incl_clips_t5xxl -o '%s' --depth 2 --vae-ch 32 "
           "--vae-ch-mult 1,1,1,1 --clip-l-width 64 --clip-l-layers 2 --clip-g-width 64 "
           "--clip-g-layers 2 --t5-width 128 --t5-layers 1 --seed 3 > /dev/null",
           SD3_BIN_DIR, ckpt);
  if (system(cmd) != 0) {
    fprintf(stderr, "could not make the checkpoint: %s\n", cmd);
    printf("0 passed, 1 failed\n");
    return 1;
  }

  CHECK(sd3_api_version() == SD3_API_VERSION, "version %d", sd3_api_version());

  /* Errors at open. */
  sd3_model* model = (sd3_model*)1;
  CHECK(sd3_model_open(NULL, &model) == SD3_ERROR_INVALID_ARGUMENT, "NULL options");
  CHECK(model == NULL, "out not cleared");
  CHECK(strlen(sd3_last_error()) > 0, "no message");
  sd3_model_options mo;
  sd3_model_options_init(&mo);
  const char* missing[] = {"/nonexistent/model.safetensors"};
  mo.model_paths = missing;
  mo.n_model_paths = 1;
  CHECK(sd3_model_open(&mo, &model) == SD3_ERROR_MODEL, "missing file");
  CHECK(strstr(sd3_last_error(), "/nonexistent/model.safetensors") != NULL, "%s",
        sd3_last_error());
  const char* files[] = {ckpt};
  mo.model_paths = files;
  mo.clip_vocab = vocab;
  mo.t5_model = spm;
  mo.backend = "tpu";
  CHECK(sd3_model_open(&mo, &model) != SD3_OK, "bad backend");
  CHECK(strstr(sd3_last_error(), "tpu") != NULL, "%s", sd3_last_error());
  mo.backend = "cpu";
  mo.threads = 2;
  mo.profile_ops = 1;

  /* Open and generate. */
  sd3_status st = sd3_model_open(&mo, &model);
  CHECK(st == SD3_OK, "open: %s", sd3_last_error());
  if (st != SD3_OK) {
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return 1;
  }
  CHECK(strstr(sd3_model_info_json(model), "sd3_medium_mmdit") != NULL, "%s",
        sd3_model_info_json(model));

  enum { W = 64, H = 48 };
  static uint8_t rgb[W * H * 3], rgb2[W * H * 3];
  sd3_generate_options go;
  sd3_generate_options_init(&go);
  go.prompt = "a red fox in snow";
  go.negative_prompt = "blurry";
  go.width = W;
  go.height = H;
  go.steps = 3;
  go.seed = 1234;
  struct progress_log log = {0, 0, 0};
  st = sd3_generate(model, &go, rgb, sizeof rgb, on_progress, &log);
  CHECK(st == SD3_OK, "generate: %s", sd3_last_error());
  CHECK(log.sample_steps == 3, "progress saw %d sampling steps", log.sample_steps);
  CHECK(log.calls >= 6, "progress called %d times", log.calls);
  int distinct = 0;
  for (size_t i = 1; i < sizeof rgb; ++i) distinct += rgb[i] != rgb[0];
  CHECK(distinct > 0, "the image is one flat value");
  CHECK(strstr(sd3_last_run_json(model), "\"seed\":1234") != NULL, "%s",
        sd3_last_run_json(model));
  /* profile_ops: every op of the generation, by name. */
  CHECK(strstr(sd3_last_run_json(model), "\"ops\":[") != NULL &&
            strstr(sd3_last_run_json(model), "\"op\":\"linear\"") != NULL &&
            strstr(sd3_last_run_json(model), "\"op\":\"conv2d\"") != NULL,
        "no op profile in %s", sd3_last_run_json(model));

  /* Same seed, same bytes; another seed, other bytes. */
  st = sd3_generate(model, &go, rgb2, sizeof rgb2, NULL, NULL);
  CHECK(st == SD3_OK && memcmp(rgb, rgb2, sizeof rgb) == 0, "not deterministic");
  go.seed = 1235;
  st = sd3_generate(model, &go, rgb2, sizeof rgb2, NULL, NULL);
  CHECK(st == SD3_OK && memcmp(rgb, rgb2, sizeof rgb) != 0, "seed ignored");
  go.seed = 1234;

  /* Bad requests. */
  CHECK(sd3_generate(model, &go, rgb, sizeof rgb - 1, NULL, NULL) == SD3_ERROR_INVALID_ARGUMENT,
        "small buffer");
  CHECK(strstr(sd3_last_error(), "buffer") != NULL, "%s", sd3_last_error());
  go.width = 100;
  CHECK(sd3_generate(model, &go, rgb, sizeof rgb, NULL, NULL) == SD3_ERROR_INVALID_ARGUMENT,
        "width 100");
  CHECK(strstr(sd3_last_error(), "16") != NULL, "%s", sd3_last_error());
  go.width = W;
  go.sampler = "magic";
  CHECK(sd3_generate(model, &go, rgb, sizeof rgb, NULL, NULL) == SD3_ERROR_INVALID_ARGUMENT,
        "bad sampler");
  go.sampler = "heun";
  CHECK(sd3_generate(model, &go, rgb2, sizeof rgb2, NULL, NULL) == SD3_OK, "heun: %s",
        sd3_last_error());
  go.sampler = NULL;
  CHECK(sd3_generate(NULL, &go, rgb, sizeof rgb, NULL, NULL) == SD3_ERROR_INVALID_ARGUMENT,
        "NULL model");

  /* Cancellation from the progress callback. */
  struct progress_log cancel = {0, 0, 1};
  CHECK(sd3_generate(model, &go, rgb2, sizeof rgb2, on_progress, &cancel) == SD3_ERROR_CANCELLED,
        "cancel: %s", sd3_last_error());
  CHECK(cancel.sample_steps == 1, "cancelled after %d steps", cancel.sample_steps);
  /* The model is still usable afterwards. */
  CHECK(sd3_generate(model, &go, rgb2, sizeof rgb2, NULL, NULL) == SD3_OK &&
            memcmp(rgb, rgb2, sizeof rgb) == 0,
        "after cancel: %s", sd3_last_error());

  /* img2img from the image just made. */
  go.init_image = rgb;
  go.strength = 0.5f;
  CHECK(sd3_generate(model, &go, rgb2, sizeof rgb2, NULL, NULL) == SD3_OK, "img2img: %s",
        sd3_last_error());
  go.init_image = NULL;

  /* PNG helpers. */
  const char* keys[] = {"parameters"};
  const char* values[] = {"a red fox in snow\nSteps: 3"};
  CHECK(sd3_write_png(png, rgb, W, H, keys, values, 1) == SD3_OK, "%s", sd3_last_error());
  uint8_t* back = NULL;
  int bw = 0, bh = 0;
  CHECK(sd3_read_png(png, &back, &bw, &bh) == SD3_OK, "%s", sd3_last_error());
  CHECK(back && bw == W && bh == H && memcmp(back, rgb, sizeof rgb) == 0, "round trip");
  free(back);
  CHECK(sd3_read_png(ckpt, &back, &bw, &bh) != SD3_OK && back == NULL, "not a PNG");
  CHECK(strstr(sd3_last_error(), "tiny.safetensors") != NULL, "%s", sd3_last_error());
  char bad_png[600];
  snprintf(bad_png, sizeof bad_png, "%s/no/such/dir/x.png", dir);
  CHECK(sd3_write_png(bad_png, rgb, W, H, NULL, NULL, 0) != SD3_OK, "bad path");

  sd3_model_free(model);
  sd3_model_free(NULL);
  remove(png);
  remove(ckpt);
  rmdir(dir);
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
