#ifndef CLIPSERVE_SERVER_MODEL_DNNL_PRODUCTS_H_
#define CLIPSERVE_SERVER_MODEL_DNNL_PRODUCTS_H_

// What the products that call oneDNN's matmul directly (Int8Linear, Bf16Linear) share:
// the CPU engine and a bounded cache of compiled products. Private to server/model's
// .cc files, and only where CLIPSERVE_WITH_DNNL is set.

#include <cstddef>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace clipserve::dnnl_products {

inline const dnnl::engine& CpuEngine() {
  static const dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
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

}  // namespace clipserve::dnnl_products

#endif  // CLIPSERVE_SERVER_MODEL_DNNL_PRODUCTS_H_
