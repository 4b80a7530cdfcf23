/* vigil's TensorRT shim: a plain C interface over the parts of TensorRT 10's C++ API that vigil
 * uses. Rust bindings are generated from this header by bindgen (see build.rs).
 *
 * Rules: no C++ exception crosses this boundary; every call that can fail returns a vt_status
 * and writes a message into the caller's (err, err_len) buffer, always NUL-terminated. Objects
 * returned through out-pointers are owned by the caller and released with their _free call. */
#ifndef VIGIL_TRT_H
#define VIGIL_TRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum vt_status {
    VT_OK = 0,
    VT_ERR_INVALID_ARGUMENT = 1,
    /* TensorRT's libraries are missing or could not create the object (the stub library). */
    VT_ERR_UNAVAILABLE = 2,
    VT_ERR_PARSE = 3,
    VT_ERR_BUILD = 4,
    VT_ERR_DESERIALIZE = 5,
    VT_ERR_RUNTIME = 6,
    /* A C++ exception was caught in the shim. */
    VT_ERR_INTERNAL = 7
} vt_status;

/* TensorRT's ILogger severities. */
typedef enum vt_severity {
    VT_SEVERITY_INTERNAL_ERROR = 0,
    VT_SEVERITY_ERROR = 1,
    VT_SEVERITY_WARNING = 2,
    VT_SEVERITY_INFO = 3,
    VT_SEVERITY_VERBOSE = 4
} vt_severity;

/* Called for every TensorRT log line at or above the minimum severity, from any thread. */
typedef void (*vt_log_fn)(void *user, int32_t severity, const char *message);

/* Routes TensorRT's log to `fn` (NULL: drop it); lines less severe than `min_severity` are dropped
 * in the shim. Set once before creating builders or engines. */
void vt_set_logger(vt_log_fn fn, void *user, int32_t min_severity);

/* The TensorRT library's version as major*10000 + minor*100 + patch (0 from the stub). */
int32_t vt_library_version(void);
/* The version of the headers the shim was compiled against, same encoding. */
int32_t vt_header_version(void);
/* 1 when linked against vigil's stub library (CI builds) rather than TensorRT. */
int32_t vt_is_stub(void);

typedef enum vt_precision {
    /* INT8 where the ONNX model's Q/DQ nodes say so, FP16 elsewhere where faster (the default). */
    VT_PRECISION_INT8_QDQ = 0,
    /* Types exactly as the network says (TensorRT's strongly typed mode). */
    VT_PRECISION_STRONGLY_TYPED = 1,
    VT_PRECISION_FP16 = 2,
    VT_PRECISION_FP32 = 3
} vt_precision;

typedef struct vt_build_options {
    int32_t precision;          /* a vt_precision */
    uint64_t workspace_bytes;   /* builder workspace pool limit; 0: TensorRT's default */
    int32_t dla_core;           /* DLA core to build for, with GPU fallback; -1: GPU only */
    int32_t max_batch;          /* optimisation profile max for a dynamic batch dimension; >= 1 */
} vt_build_options;

/* A serialized engine (TensorRT's IHostMemory). */
typedef struct vt_blob vt_blob;
const void *vt_blob_data(const vt_blob *blob);
size_t vt_blob_size(const vt_blob *blob);
void vt_blob_free(vt_blob *blob);

/* Parses an ONNX file and builds a serialized engine for the current GPU. */
vt_status vt_build_engine(const char *onnx_path, const vt_build_options *options, vt_blob **out, char *err,
                          size_t err_len);

typedef struct vt_engine vt_engine;
/* Deserializes an engine (built by this TensorRT version for this GPU); dla_core as it was built. */
vt_status vt_engine_load(const void *data, size_t size, int32_t dla_core, vt_engine **out, char *err, size_t err_len);
void vt_engine_free(vt_engine *engine);

enum { VT_MAX_DIMS = 8, VT_MAX_NAME = 256 };

typedef enum vt_dtype {
    VT_DTYPE_FLOAT = 0,
    VT_DTYPE_HALF = 1,
    VT_DTYPE_INT8 = 2,
    VT_DTYPE_INT32 = 3,
    VT_DTYPE_BOOL = 4,
    VT_DTYPE_UINT8 = 5,
    VT_DTYPE_INT64 = 6,
    VT_DTYPE_OTHER = 99
} vt_dtype;

typedef struct vt_tensor_info {
    char name[VT_MAX_NAME];
    int32_t is_input;
    int32_t dtype;              /* a vt_dtype */
    int32_t nb_dims;
    int64_t dims[VT_MAX_DIMS];  /* -1 for a dynamic dimension */
} vt_tensor_info;

int32_t vt_engine_io_count(const vt_engine *engine);
vt_status vt_engine_io(const vt_engine *engine, int32_t index, vt_tensor_info *out, char *err, size_t err_len);

typedef struct vt_context vt_context;
vt_status vt_context_create(vt_engine *engine, vt_context **out, char *err, size_t err_len);
void vt_context_free(vt_context *context);
/* Sets the shape of a dynamic input before enqueueing. */
vt_status vt_context_set_input_shape(vt_context *context, const char *name, int32_t nb_dims, const int64_t *dims,
                                     char *err, size_t err_len);
/* Binds a tensor to a device address (CUdeviceptr). */
vt_status vt_context_set_address(vt_context *context, const char *name, uint64_t device_address, char *err,
                                 size_t err_len);
/* Enqueues inference on a CUDA stream (a CUstream / cudaStream_t). */
vt_status vt_context_enqueue(vt_context *context, void *stream, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* VIGIL_TRT_H */
