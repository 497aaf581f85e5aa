#ifndef CLIPSERVE_SERVER_MODEL_DNNL_PRODUCTS_H_
#define CLIPSERVE_SERVER_MODEL_DNNL_PRODUCTS_H_

// What the products that call oneDNN's matmul directly (Int8Linear, Bf16Linear) share:
// the CPU engine, packing a weight into the layout a product reads, a bounded cache of
// compiled products, and running one. Private to server/model's .cc files, and only
// where CLIPSERVE_WITH_DNNL is set.

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/model/linear_activation.h"
#include "server/model/quick_gelu.h"

namespace clipserve::dnnl_products {

inline const dnnl::engine& CpuEngine() {
  static const dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// Whether oneDNN chose only its reference loop for `pd`: far slower than LibTorch's
// own kernels (a CPU without the instructions oneDNN's fast kernels need).
inline bool IsReference(const dnnl::matmul::primitive_desc& pd) {
  return std::string_view(pd.impl_info_str()).rfind("ref", 0) == 0;
}

// Appends `activation` to a product's post-ops: it then runs on the fp32 sums, after
// the post-ops before it, and the product rounds its result once.
inline void AppendActivation(dnnl::post_ops& ops, LinearActivation activation) {
  if (activation == LinearActivation::kQuickGelu) {
    // QuickGELU is oneDNN's swish, x * sigmoid(alpha x), with alpha 1.702.
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_swish, kQuickGeluSlope, 0.0f);
  } else if (activation == LinearActivation::kGelu) {
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
  }
}

// A weight laid out once for a product's kernel.
struct PackedWeight {
  dnnl::memory::desc layout;
  dnnl::memory memory;
};

// The weight held row-major as [out, in] (the [in, out] matrix in column-major order)
// at `plain`, of `type`, copied into the layout the kernel picks for a large product,
// describe(rows, weights) (a dnnl::matmul::primitive_desc for weights of
// format_tag::any). Every row count takes that layout: oneDNN's blocking of the
// weights depends on their shape alone.
template <typename Describe>
PackedWeight PackWeight(const void* plain, int64_t in, int64_t out,
                        dnnl::memory::data_type type, Describe describe) {
  constexpr int64_t kLargeProductRows = 1024;
  PackedWeight packed;
  packed.layout =
      describe(kLargeProductRows,
               dnnl::memory::desc({in, out}, type, dnnl::memory::format_tag::any))
          .weights_desc();
  packed.memory = dnnl::memory(packed.layout, CpuEngine());
  dnnl::memory from({{in, out}, type, dnnl::memory::format_tag::ba}, CpuEngine(),
                    const_cast<void*>(plain));  // only read
  dnnl::stream stream(CpuEngine());
  dnnl::reorder(from, packed.memory).execute(stream, from, packed.memory);
  stream.wait();
  return packed;
}

// A product's compiled kernel, and the scratchpad each call brings (calls share no
// buffer: primitives made with scratchpad_mode::user).
struct Product {
  dnnl::matmul primitive;
  size_t scratchpad_bytes;
};

// Compiled products by Key (a shape: the input's row count is part of it). Bounded: a
// row count is a batch's items times its tokens, so hostile traffic could ask for
// many; past kCapacity the cache starts over (calls in flight keep theirs).
template <typename Key>
class ProductCache {
 public:
  // The product for `key`, compiled from describe() (a dnnl::matmul::primitive_desc)
  // the first time.
  template <typename Describe>
  std::shared_ptr<const Product> Get(const Key& key, Describe describe) {
    {
      absl::MutexLock lock(&mu_);
      auto it = products_.find(key);
      if (it != products_.end()) return it->second;
    }
    // Compiled outside the lock (about a millisecond): other shapes need not wait.
    const dnnl::matmul::primitive_desc pd = describe();
    auto product = std::make_shared<const Product>(
        Product{dnnl::matmul(pd), pd.scratchpad_desc().get_size()});
    absl::MutexLock lock(&mu_);
    if (products_.size() >= kCapacity) products_.clear();
    return products_.emplace(key, std::move(product)).first->second;
  }

 private:
  static constexpr size_t kCapacity = 4096;
  absl::Mutex mu_;
  absl::flat_hash_map<Key, std::shared_ptr<const Product>> products_ ABSL_GUARDED_BY(mu_);
};

// Runs `product` on `args` (every argument but the scratchpad) with a scratchpad of its
// own, and waits for it.
inline void Execute(const Product& product, std::unordered_map<int, dnnl::memory> args) {
  const auto bytes = static_cast<int64_t>(product.scratchpad_bytes);
  const at::Tensor scratchpad = at::empty({bytes}, at::kByte);
  args.emplace(
      DNNL_ARG_SCRATCHPAD,
      dnnl::memory({{bytes}, dnnl::memory::data_type::u8, dnnl::memory::format_tag::a},
                   CpuEngine(), scratchpad.data_ptr()));
  dnnl::stream stream(CpuEngine());
  product.primitive.execute(stream, args);
  stream.wait();
}

}  // namespace clipserve::dnnl_products

#endif  // CLIPSERVE_SERVER_MODEL_DNNL_PRODUCTS_H_
