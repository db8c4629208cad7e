// The C API of include/sd3.h over models::Pipeline: options translated, errors caught and
// turned into status codes plus a per-thread message, so no exception crosses the boundary.
#include "sd3.h"

#include <nlohmann/json.hpp>
#include <cstdlib>
#include <new>
#include <string>

#include "engine/device.h"
#include "engine/op_profile.h"
#include "engine/ops.h"
#include "models/image.h"
#include "models/pipeline.h"

using sd3::models::Pipeline;

struct sd3_model {
  std::unique_ptr<Pipeline> pipeline;
  std::string info_json;
  std::string last_run_json;
  bool profile_ops = false;
};

namespace {

thread_local std::string g_last_error;

sd3_status set_error(sd3_status status, const std::string& message) {
  g_last_error = message;
  return status;
}

// Runs `body`, mapping exceptions to statuses.
template <class F>
sd3_status guarded(F&& body, sd3_status error_status) {
  try {
    g_last_error.clear();
    body();
    return SD3_OK;
  } catch (const sd3::models::GenerationCancelled& e) {
    return set_error(SD3_ERROR_CANCELLED, e.what());
  } catch (const sd3::models::SamplingCancelled& e) {
    return set_error(SD3_ERROR_CANCELLED, e.what());
  } catch (const sd3::Error& e) {
    return set_error(error_status, e.what());
  } catch (const std::bad_alloc&) {
    return set_error(SD3_ERROR_BACKEND, "out of memory");
  } catch (const std::exception& e) {
    return set_error(SD3_ERROR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return set_error(SD3_ERROR_INTERNAL, "internal error: unknown exception");
  }
}

std::string str_or_empty(const char* s) { return s ? std::string(s) : std::string(); }

nlohmann::json slg_json(const sd3::models::SkipLayerGuidance& slg) {
  return {{"scale", slg.scale}, {"start", slg.start}, {"end", slg.end}, {"layers", slg.layers}};
}

std::string info_json(const Pipeline& p) {
  nlohmann::json j;
  j["mmdit_arch"] = p.mmdit_arch();
  const auto& d = p.defaults();
  j["defaults"] = {{"preset", d.preset},
                   {"steps", d.steps},
                   {"cfg_scale", d.cfg_scale},
                   {"shift", d.shift},
                   {"sampler", sd3::models::sampler_name(d.sampler)},
                   {"slg", slg_json(d.slg)}};
  nlohmann::json comps = nlohmann::json::array();
  for (auto kind : sd3::models::kAllComponentKinds) {
    if (const auto* c = p.files().find(kind)) {
      std::string files;
      for (const auto& f : c->weights.files()) files += (files.empty() ? "" : ", ") + f->path();
      comps.push_back({{"component", sd3::models::component_kind_name(kind)},
                       {"arch", c->arch},
                       {"prefix", c->prefix},
                       {"file", files},
                       {"param_count", c->param_count},
                       {"config", sd3::models::config_to_json(c->config)}});
    }
  }
  j["components"] = comps;
  j["warnings"] = p.warnings();
  return j.dump();
}

}  // namespace

extern "C" {

int sd3_api_version(void) { return SD3_API_VERSION; }

void sd3_model_options_init(sd3_model_options* o) {
  if (!o) return;
  *o = sd3_model_options{};
  o->backend = "cpu";
}

void sd3_generate_options_init(sd3_generate_options* o) {
  if (!o) return;
  *o = sd3_generate_options{};
  o->prompt = "";
  o->negative_prompt = "";
  o->cfg_scale = -1.0f;
  o->shift = -1.0f;
  o->slg_scale = -1.0f;
  o->slg_start = -1.0f;
  o->slg_end = -1.0f;
  o->strength = 0.75f;
}

sd3_status sd3_model_open(const sd3_model_options* o, sd3_model** out) {
  if (!out) return set_error(SD3_ERROR_INVALID_ARGUMENT, "sd3_model_open: out is NULL");
  *out = nullptr;
  if (!o) return set_error(SD3_ERROR_INVALID_ARGUMENT, "sd3_model_open: options is NULL");
  std::unique_ptr<sd3_model> m(new (std::nothrow) sd3_model());
  if (!m) return set_error(SD3_ERROR_BACKEND, "out of memory");
  sd3_status st = guarded(
      [&] {
        sd3::models::PipelineOptions po;
        SD3_CHECK(o->n_model_paths == 0 || o->model_paths, "model_paths is NULL");
        for (size_t i = 0; i < o->n_model_paths; ++i) {
          SD3_CHECK(o->model_paths[i], "model_paths[", i, "] is NULL");
          po.paths.models.emplace_back(o->model_paths[i]);
        }
        po.paths.clip_l = str_or_empty(o->clip_l);
        po.paths.clip_g = str_or_empty(o->clip_g);
        po.paths.t5xxl = str_or_empty(o->t5xxl);
        po.paths.vae = str_or_empty(o->vae);
        SD3_CHECK(!po.paths.models.empty() || !po.paths.clip_l.empty() ||
                      !po.paths.vae.empty(),
                  "no model file given");
        po.clip_vocab = str_or_empty(o->clip_vocab);
        po.t5_model = str_or_empty(o->t5_model);
        po.device = sd3::parse_device(o->backend ? o->backend : "cpu");
        if (po.device.is_cuda())
          SD3_CHECK(sd3::cuda_available(), "backend cuda: ", sd3::cuda_unavailable_reason());
        SD3_CHECK(o->threads >= 0, "threads ", o->threads, " is negative");
        sd3::set_num_threads(o->threads);
        po.free_encoders = o->free_encoders != 0;
        po.use_t5 = o->no_t5 == 0;
        po.preset = str_or_empty(o->preset);
        sd3::fusion() = sd3::parse_unfused(str_or_empty(o->unfused));
        m->profile_ops = o->profile_ops != 0;
        m->pipeline = Pipeline::open(po);
        m->info_json = info_json(*m->pipeline);
      },
      SD3_ERROR_MODEL);
  if (st == SD3_OK) *out = m.release();
  return st;
}

sd3_status sd3_generate(sd3_model* model, const sd3_generate_options* o, uint8_t* rgb,
                        size_t rgb_size, sd3_progress_fn progress, void* user) {
  if (!model || !model->pipeline)
    return set_error(SD3_ERROR_INVALID_ARGUMENT, "sd3_generate: model is NULL");
  if (!o) return set_error(SD3_ERROR_INVALID_ARGUMENT, "sd3_generate: options is NULL");
  sd3::models::GenerateParams gp;
  sd3_status st = guarded(
      [&] {
        gp.prompt = str_or_empty(o->prompt);
        gp.negative_prompt = str_or_empty(o->negative_prompt);
        SD3_CHECK(o->width >= 0 && o->height >= 0, "negative image size ", o->width, "x",
                  o->height);
        gp.width = o->width;
        gp.height = o->height;
        SD3_CHECK(o->steps >= 0, "steps ", o->steps, " is negative");
        if (o->steps > 0) gp.steps = o->steps;
        if (o->cfg_scale >= 0) gp.cfg_scale = o->cfg_scale;
        if (o->shift > 0) gp.shift = o->shift;
        if (o->sampler && *o->sampler) gp.sampler = sd3::models::parse_sampler(o->sampler);
        gp.seed = o->seed;
        if (o->slg_scale >= 0) gp.slg_scale = o->slg_scale;
        if (o->skip_layers) gp.skip_layers = std::vector<int>(o->skip_layers, o->skip_layers + o->n_skip_layers);
        if (o->slg_start >= 0) gp.slg_start = o->slg_start;
        if (o->slg_end >= 0) gp.slg_end = o->slg_end;
        const int64_t w = gp.width ? gp.width : 1024, h = gp.height ? gp.height : 1024;
        sd3::models::check_image_size(w, "width");
        sd3::models::check_image_size(h, "height");
        const size_t need = static_cast<size_t>(w) * static_cast<size_t>(h) * 3;
        SD3_CHECK(rgb != nullptr, "output buffer is NULL");
        SD3_CHECK(rgb_size >= need, "output buffer of ", rgb_size, " bytes is smaller than ",
                  w, "x", h, "x3 = ", need);
        if (o->init_image) {
          sd3::models::Image init;
          init.width = w;
          init.height = h;
          init.pixels.assign(o->init_image, o->init_image + need);
          gp.init_image = std::move(init);
          gp.strength = o->strength;
        }
        sd3::models::ProgressFn pf;
        if (progress) {
          pf = [&](const sd3::models::Progress& p) {
            sd3_progress cp{p.stage.c_str(), p.step, p.total, p.stage_seconds};
            return progress(&cp, user) == 0;
          };
        }
        // Note [Op profile]: on for this generation only, off again however it ends.
        struct ProfileOff {
          ~ProfileOff() { sd3::set_op_profile(false); }
        } profile_off;
        if (model->profile_ops) {
          sd3::reset_op_profile();
          sd3::set_op_profile(true);
        }
        sd3::models::GenerateResult r = model->pipeline->generate(gp, pf);
        sd3::set_op_profile(false);
        std::copy(r.image.pixels.begin(), r.image.pixels.end(), rgb);
        const auto& rp = r.params;
        nlohmann::json j;
        j["params"] = {{"prompt", rp.prompt},
                       {"negative_prompt", rp.negative_prompt},
                       {"width", rp.width},
                       {"height", rp.height},
                       {"steps", rp.steps},
                       {"cfg_scale", rp.cfg_scale},
                       {"shift", rp.shift},
                       {"sampler", sd3::models::sampler_name(rp.sampler)},
                       {"seed", rp.seed},
                       {"slg", slg_json(rp.slg)},
                       {"img2img", rp.img2img},
                       {"strength", rp.strength},
                       {"mmdit_arch", rp.mmdit_arch},
                       {"preset", rp.preset}};
        nlohmann::json timings = nlohmann::json::object();
        double total = 0;
        for (const auto& t : r.timings) {
          timings[t.stage] = t.seconds;
          total += t.seconds;
        }
        timings["total"] = total;
        j["seconds"] = timings;
        j["peak_host_bytes"] = r.peak_host_bytes;
        j["peak_device_bytes"] = r.peak_device_bytes;
        if (model->profile_ops) {
          nlohmann::json ops = nlohmann::json::array();
          for (const sd3::OpStat& op : sd3::read_op_profile())
            ops.push_back({{"op", op.op}, {"calls", op.calls}, {"ms", op.ms}});
          j["ops"] = ops;
        }
        model->last_run_json = j.dump();
      },
      SD3_ERROR_INVALID_ARGUMENT);
  return st;
}

const char* sd3_last_run_json(const sd3_model* model) {
  return model ? model->last_run_json.c_str() : "";
}

const char* sd3_model_info_json(const sd3_model* model) {
  return model ? model->info_json.c_str() : "";
}

sd3_status sd3_write_png(const char* path, const uint8_t* rgb, int width, int height,
                         const char* const* keys, const char* const* values, size_t n_text) {
  return guarded(
      [&] {
        SD3_CHECK(path && *path, "PNG path is empty");
        SD3_CHECK(rgb, "PNG pixels are NULL");
        SD3_CHECK(width > 0 && height > 0, "PNG size ", width, "x", height, " is not positive");
        SD3_CHECK(n_text == 0 || (keys && values), "PNG text arrays are NULL");
        sd3::models::Image img;
        img.width = width;
        img.height = height;
        img.pixels.assign(rgb, rgb + static_cast<size_t>(width) * height * 3);
        sd3::models::PngText text;
        for (size_t i = 0; i < n_text; ++i) {
          SD3_CHECK(keys[i] && values[i], "PNG text entry ", i, " is NULL");
          text.emplace_back(keys[i], values[i]);
        }
        sd3::models::write_png(path, img, text);
      },
      SD3_ERROR_INVALID_ARGUMENT);
}

sd3_status sd3_read_png(const char* path, uint8_t** rgb, int* width, int* height) {
  if (!rgb || !width || !height)
    return set_error(SD3_ERROR_INVALID_ARGUMENT, "sd3_read_png: output pointer is NULL");
  *rgb = nullptr;
  *width = *height = 0;
  return guarded(
      [&] {
        SD3_CHECK(path && *path, "PNG path is empty");
        sd3::models::PngImage png = sd3::models::read_png(path);
        auto* buf = static_cast<uint8_t*>(std::malloc(png.image.pixels.size()));
        if (!buf) throw std::bad_alloc();
        std::copy(png.image.pixels.begin(), png.image.pixels.end(), buf);
        *rgb = buf;
        *width = static_cast<int>(png.image.width);
        *height = static_cast<int>(png.image.height);
      },
      SD3_ERROR_INVALID_ARGUMENT);
}

const char* sd3_last_error(void) { return g_last_error.c_str(); }

void sd3_model_free(sd3_model* model) { delete model; }

}  // extern "C"
