// vigil's TensorRT shim: see vigil_trt.h for the contract. Compiled against TensorRT 10.x
// (JetPack 6 ships 10.3; CI compiles against the 10.16 headers). In 10.x objects are released
// with `delete`.

#include "vigil_trt.h"

#include <NvInfer.h>
#include <NvOnnxParser.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

namespace {

std::atomic<vt_log_fn> g_log_fn{nullptr};
std::atomic<void *> g_log_user{nullptr};
std::atomic<int32_t> g_log_min{VT_SEVERITY_WARNING};

class Logger final : public nvinfer1::ILogger {
  public:
    void log(Severity severity, const char *msg) noexcept override {
        auto fn = g_log_fn.load();
        auto level = static_cast<int32_t>(severity);
        if (fn != nullptr && level <= g_log_min.load()) {
            fn(g_log_user.load(), level, msg != nullptr ? msg : "");
        }
    }
};

Logger &logger() {
    static Logger instance;
    return instance;
}

void set_error(char *err, size_t err_len, const std::string &message) {
    if (err == nullptr || err_len == 0) {
        return;
    }
    std::snprintf(err, err_len, "%s", message.c_str());
}

vt_status fail(char *err, size_t err_len, vt_status status, const std::string &message) {
    set_error(err, err_len, message);
    return status;
}

// Runs `body`, turning any C++ exception into VT_ERR_INTERNAL.
template <typename F> vt_status guarded(char *err, size_t err_len, F &&body) noexcept {
    try {
        return body();
    } catch (const std::exception &e) {
        return fail(err, err_len, VT_ERR_INTERNAL, std::string("exception in the TensorRT shim: ") + e.what());
    } catch (...) {
        return fail(err, err_len, VT_ERR_INTERNAL, "unknown exception in the TensorRT shim");
    }
}

vt_dtype to_vt(nvinfer1::DataType t) {
    switch (t) {
    case nvinfer1::DataType::kFLOAT:
        return VT_DTYPE_FLOAT;
    case nvinfer1::DataType::kHALF:
        return VT_DTYPE_HALF;
    case nvinfer1::DataType::kINT8:
        return VT_DTYPE_INT8;
    case nvinfer1::DataType::kINT32:
        return VT_DTYPE_INT32;
    case nvinfer1::DataType::kBOOL:
        return VT_DTYPE_BOOL;
    case nvinfer1::DataType::kUINT8:
        return VT_DTYPE_UINT8;
    case nvinfer1::DataType::kINT64:
        return VT_DTYPE_INT64;
    default:
        return VT_DTYPE_OTHER;
    }
}

// Dynamic inputs get one optimisation profile: batch 1 to max_batch, other dims as declared.
bool add_batch_profile(nvinfer1::IBuilder &builder, nvinfer1::INetworkDefinition &network,
                       nvinfer1::IBuilderConfig &config, int32_t max_batch, std::string &why) {
    nvinfer1::IOptimizationProfile *profile = nullptr;
    for (int32_t i = 0; i < network.getNbInputs(); ++i) {
        nvinfer1::ITensor *input = network.getInput(i);
        nvinfer1::Dims dims = input->getDimensions();
        bool dynamic = false;
        for (int32_t d = 0; d < dims.nbDims; ++d) {
            if (dims.d[d] < 0) {
                if (d != 0) {
                    why = std::string("input `") + input->getName() + "` has a dynamic dimension other than the batch";
                    return false;
                }
                dynamic = true;
            }
        }
        if (!dynamic) {
            continue;
        }
        if (profile == nullptr) {
            profile = builder.createOptimizationProfile();
        }
        nvinfer1::Dims lo = dims, hi = dims;
        lo.d[0] = 1;
        hi.d[0] = max_batch;
        profile->setDimensions(input->getName(), nvinfer1::OptProfileSelector::kMIN, lo);
        profile->setDimensions(input->getName(), nvinfer1::OptProfileSelector::kOPT, hi);
        profile->setDimensions(input->getName(), nvinfer1::OptProfileSelector::kMAX, hi);
    }
    if (profile != nullptr && config.addOptimizationProfile(profile) < 0) {
        why = "TensorRT refused the batch optimisation profile";
        return false;
    }
    return true;
}

} // namespace

struct vt_blob {
    std::unique_ptr<nvinfer1::IHostMemory> memory;
};

struct vt_engine {
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
};

struct vt_context {
    std::unique_ptr<nvinfer1::IExecutionContext> context;
};

extern "C" {

void vt_set_logger(vt_log_fn fn, void *user, int32_t min_severity) {
    g_log_user.store(user);
    g_log_min.store(min_severity);
    g_log_fn.store(fn);
}

int32_t vt_library_version(void) { return getInferLibVersion(); }

int32_t vt_header_version(void) { return NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH; }

// build.rs defines VT_STUB=1 when it links the stub library instead of TensorRT.
#ifndef VT_STUB
#define VT_STUB 0
#endif
int32_t vt_is_stub(void) { return VT_STUB; }

const void *vt_blob_data(const vt_blob *blob) { return blob != nullptr ? blob->memory->data() : nullptr; }

size_t vt_blob_size(const vt_blob *blob) { return blob != nullptr ? blob->memory->size() : 0; }

void vt_blob_free(vt_blob *blob) { delete blob; }

vt_status vt_build_engine(const char *onnx_path, const vt_build_options *options, vt_blob **out, char *err,
                          size_t err_len) {
    return guarded(err, err_len, [&]() -> vt_status {
        if (onnx_path == nullptr || options == nullptr || out == nullptr || options->max_batch < 1) {
            return fail(err, err_len, VT_ERR_INVALID_ARGUMENT, "vt_build_engine: missing argument or max_batch < 1");
        }
        *out = nullptr;
        std::unique_ptr<nvinfer1::IBuilder> builder(nvinfer1::createInferBuilder(logger()));
        if (!builder) {
            return fail(err, err_len, VT_ERR_UNAVAILABLE, "TensorRT could not create a builder (no TensorRT library?)");
        }
        const bool strongly_typed = options->precision == VT_PRECISION_STRONGLY_TYPED;
        const uint32_t flags =
            strongly_typed ? 1U << static_cast<uint32_t>(nvinfer1::NetworkDefinitionCreationFlag::kSTRONGLY_TYPED) : 0U;
        std::unique_ptr<nvinfer1::INetworkDefinition> network(builder->createNetworkV2(flags));
        if (!network) {
            return fail(err, err_len, VT_ERR_BUILD, "TensorRT could not create a network definition");
        }
        std::unique_ptr<nvonnxparser::IParser> parser(nvonnxparser::createParser(*network, logger()));
        if (!parser) {
            return fail(err, err_len, VT_ERR_UNAVAILABLE, "TensorRT could not create an ONNX parser");
        }
        if (!parser->parseFromFile(onnx_path, static_cast<int>(nvinfer1::ILogger::Severity::kWARNING))) {
            std::string message = std::string("TensorRT cannot parse ") + onnx_path + ":";
            for (int32_t i = 0; i < parser->getNbErrors(); ++i) {
                message += std::string(" [") + parser->getError(i)->desc() + "]";
            }
            return fail(err, err_len, VT_ERR_PARSE, message);
        }
        std::unique_ptr<nvinfer1::IBuilderConfig> config(builder->createBuilderConfig());
        if (!config) {
            return fail(err, err_len, VT_ERR_BUILD, "TensorRT could not create a builder config");
        }
        if (options->workspace_bytes > 0) {
            config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE, options->workspace_bytes);
        }
        switch (options->precision) {
        case VT_PRECISION_INT8_QDQ:
            // Explicit quantization: the Q/DQ nodes fix the INT8 layers; FP16 is allowed elsewhere.
            config->setFlag(nvinfer1::BuilderFlag::kINT8);
            config->setFlag(nvinfer1::BuilderFlag::kFP16);
            break;
        case VT_PRECISION_FP16:
            config->setFlag(nvinfer1::BuilderFlag::kFP16);
            break;
        case VT_PRECISION_STRONGLY_TYPED:
        case VT_PRECISION_FP32:
            break;
        default:
            return fail(err, err_len, VT_ERR_INVALID_ARGUMENT, "vt_build_engine: unknown precision");
        }
        if (options->dla_core >= 0) {
            if (options->dla_core >= builder->getNbDLACores()) {
                return fail(err, err_len, VT_ERR_INVALID_ARGUMENT,
                            "DLA core " + std::to_string(options->dla_core) + " requested; this device has " +
                                std::to_string(builder->getNbDLACores()));
            }
            config->setDefaultDeviceType(nvinfer1::DeviceType::kDLA);
            config->setDLACore(options->dla_core);
            config->setFlag(nvinfer1::BuilderFlag::kGPU_FALLBACK);
        }
        std::string why;
        if (!add_batch_profile(*builder, *network, *config, options->max_batch, why)) {
            return fail(err, err_len, VT_ERR_BUILD, why);
        }
        std::unique_ptr<nvinfer1::IHostMemory> plan(builder->buildSerializedNetwork(*network, *config));
        if (!plan || plan->size() == 0) {
            return fail(err, err_len, VT_ERR_BUILD, "TensorRT could not build the engine (see the TensorRT log above)");
        }
        *out = new vt_blob{std::move(plan)};
        return VT_OK;
    });
}

vt_status vt_engine_load(const void *data, size_t size, int32_t dla_core, vt_engine **out, char *err,
                         size_t err_len) {
    return guarded(err, err_len, [&]() -> vt_status {
        if (data == nullptr || size == 0 || out == nullptr) {
            return fail(err, err_len, VT_ERR_INVALID_ARGUMENT, "vt_engine_load: empty engine");
        }
        *out = nullptr;
        std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger()));
        if (!runtime) {
            return fail(err, err_len, VT_ERR_UNAVAILABLE, "TensorRT could not create a runtime (no TensorRT library?)");
        }
        if (dla_core >= 0) {
            runtime->setDLACore(dla_core);
        }
        std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(data, size));
        if (!engine) {
            return fail(err, err_len, VT_ERR_DESERIALIZE,
                        "TensorRT rejected the serialized engine (built by another TensorRT version or for another GPU?)");
        }
        *out = new vt_engine{std::move(runtime), std::move(engine)};
        return VT_OK;
    });
}

void vt_engine_free(vt_engine *engine) {
    if (engine != nullptr) {
        engine->engine.reset(); // the engine goes before the runtime that made it
        delete engine;
    }
}

int32_t vt_engine_io_count(const vt_engine *engine) { return engine != nullptr ? engine->engine->getNbIOTensors() : 0; }

vt_status vt_engine_io(const vt_engine *engine, int32_t index, vt_tensor_info *out, char *err, size_t err_len) {
    return guarded(err, err_len, [&]() -> vt_status {
        if (engine == nullptr || out == nullptr || index < 0 || index >= engine->engine->getNbIOTensors()) {
            return fail(err, err_len, VT_ERR_INVALID_ARGUMENT, "vt_engine_io: no such tensor");
        }
        const char *name = engine->engine->getIOTensorName(index);
        std::memset(out, 0, sizeof(*out));
        std::snprintf(out->name, sizeof(out->name), "%s", name);
        out->is_input = engine->engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? 1 : 0;
        out->dtype = to_vt(engine->engine->getTensorDataType(name));
        nvinfer1::Dims dims = engine->engine->getTensorShape(name);
        if (dims.nbDims < 0 || dims.nbDims > VT_MAX_DIMS) {
            return fail(err, err_len, VT_ERR_RUNTIME, std::string("tensor `") + name + "` has an unsupported rank");
        }
        out->nb_dims = dims.nbDims;
        for (int32_t d = 0; d < dims.nbDims; ++d) {
            out->dims[d] = dims.d[d];
        }
        return VT_OK;
    });
}

vt_status vt_context_create(vt_engine *engine, vt_context **out, char *err, size_t err_len) {
    return guarded(err, err_len, [&]() -> vt_status {
        if (engine == nullptr || out == nullptr) {
            return fail(err, err_len, VT_ERR_INVALID_ARGUMENT, "vt_context_create: missing argument");
        }
        *out = nullptr;
        std::unique_ptr<nvinfer1::IExecutionContext> context(engine->engine->createExecutionContext());
        if (!context) {
            return fail(err, err_len, VT_ERR_RUNTIME, "TensorRT could not create an execution context (GPU memory?)");
        }
        *out = new vt_context{std::move(context)};
        return VT_OK;
    });
}

void vt_context_free(vt_context *context) { delete context; }

vt_status vt_context_set_input_shape(vt_context *context, const char *name, int32_t nb_dims, const int64_t *dims,
                                     char *err, size_t err_len) {
    return guarded(err, err_len, [&]() -> vt_status {
        if (context == nullptr || name == nullptr || dims == nullptr || nb_dims < 0 || nb_dims > VT_MAX_DIMS) {
            return fail(err, err_len, VT_ERR_INVALID_ARGUMENT, "vt_context_set_input_shape: bad argument");
        }
        nvinfer1::Dims shape{};
        shape.nbDims = nb_dims;
        for (int32_t d = 0; d < nb_dims; ++d) {
            shape.d[d] = dims[d];
        }
        if (!context->context->setInputShape(name, shape)) {
            return fail(err, err_len, VT_ERR_RUNTIME, std::string("TensorRT refused the shape of input `") + name + "`");
        }
        return VT_OK;
    });
}

vt_status vt_context_set_address(vt_context *context, const char *name, uint64_t device_address, char *err,
                                 size_t err_len) {
    return guarded(err, err_len, [&]() -> vt_status {
        if (context == nullptr || name == nullptr || device_address == 0) {
            return fail(err, err_len, VT_ERR_INVALID_ARGUMENT, "vt_context_set_address: bad argument");
        }
        if (!context->context->setTensorAddress(name, reinterpret_cast<void *>(device_address))) {
            return fail(err, err_len, VT_ERR_RUNTIME, std::string("TensorRT refused the address of `") + name + "`");
        }
        return VT_OK;
    });
}

vt_status vt_context_enqueue(vt_context *context, void *stream, char *err, size_t err_len) {
    return guarded(err, err_len, [&]() -> vt_status {
        if (context == nullptr) {
            return fail(err, err_len, VT_ERR_INVALID_ARGUMENT, "vt_context_enqueue: no context");
        }
        if (!context->context->enqueueV3(static_cast<cudaStream_t>(stream))) {
            return fail(err, err_len, VT_ERR_RUNTIME, "TensorRT could not enqueue inference (see the TensorRT log)");
        }
        return VT_OK;
    });
}

} // extern "C"
