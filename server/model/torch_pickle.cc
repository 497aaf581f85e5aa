#include "server/model/torch_pickle.h"

#include <cstring>
#include <map>
#include <memory>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/common/status_macros.h"

namespace clipserve {
namespace {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

struct Mark {};
struct None {};
struct Global {
  std::string module;
  std::string name;
};
struct Opaque {};  // an object of a class we do not interpret
// A TorchScript module (class "__torch__.<...>"): its attributes, the dict BUILD gives
// it (null until then). Nothing of the class is run.
struct Object {
  ValuePtr state;
};
// Distinct types so the variant can tell them apart.
struct Tuple : std::vector<ValuePtr> {
  Tuple() = default;
  explicit Tuple(std::vector<ValuePtr> items) : std::vector<ValuePtr>(std::move(items)) {}
};
struct List : std::vector<ValuePtr> {};
using Dict = std::vector<std::pair<ValuePtr, ValuePtr>>;

struct Value {
  std::variant<None, Mark, bool, int64_t, double, std::string, Tuple, List, Dict, Global,
               Opaque, Object, torch::Tensor>
      v;
  // Containers nested inside this value, counting itself: bounded so that a hostile
  // pickle cannot build chains whose recursive destruction overflows the stack.
  int depth = 0;
  // Set once the value is inside a container. A placed container may not change any
  // more (real pickles fill a container before placing it): otherwise a memoized one
  // could grow after its parent's depth was counted, or be placed inside itself.
  bool placed = false;
};

constexpr int kMaxNesting = 256;
// Operations a pickle may run. torch.save's pickle of a state dict runs 32 per tensor
// (measured with pickletools): about 32,000 for ViT-bigG's thousand tensors.
constexpr int64_t kMaxOperations = int64_t{1} << 21;

template <typename T>
ValuePtr Make(T value) {
  auto out = std::make_shared<Value>();
  out->v = std::move(value);
  return out;
}

absl::Status Bad(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed checkpoint pickle: ", what));
}

bool StorageDtype(const std::string& name, torch::ScalarType* dtype) {
  static const std::map<std::string, torch::ScalarType> kTypes = {
      {"FloatStorage", torch::kFloat},       {"HalfStorage", torch::kHalf},
      {"BFloat16Storage", torch::kBFloat16}, {"DoubleStorage", torch::kDouble},
      {"LongStorage", torch::kLong},         {"IntStorage", torch::kInt},
      {"ShortStorage", torch::kShort},       {"CharStorage", torch::kChar},
      {"ByteStorage", torch::kByte},         {"BoolStorage", torch::kBool},
  };
  auto it = kTypes.find(name);
  if (it == kTypes.end()) return false;
  *dtype = it->second;
  return true;
}

absl::StatusOr<std::vector<int64_t>> IntTuple(const ValuePtr& value,
                                              absl::string_view what) {
  const auto* tuple = std::get_if<Tuple>(&value->v);
  if (tuple == nullptr) return Bad(absl::StrCat(what, " is not a tuple"));
  std::vector<int64_t> out;
  for (const ValuePtr& item : *tuple) {
    const auto* n = std::get_if<int64_t>(&item->v);
    if (n == nullptr) return Bad(absl::StrCat(what, " holds a non-integer"));
    out.push_back(*n);
  }
  return out;
}

class Machine {
 public:
  Machine(absl::string_view data, const StorageLoader& loader)
      : data_(data), loader_(loader) {}

  absl::StatusOr<ValuePtr> Run() {
    for (int64_t ops = 0;; ++ops) {
      if (pos_ >= data_.size()) return Bad("ends before STOP");
      // Each operation makes at most one value, of about 100 bytes: without a limit a
      // 20 MB pickle of one-byte operations takes 2.4 GB.
      if (ops == kMaxOperations) {
        return Bad(absl::StrCat("more than ", kMaxOperations,
                                " operations (a CLIP checkpoint's pickle runs tens of "
                                "thousands)"));
      }
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      switch (op) {
        case 0x80:  // PROTO
          CLIPSERVE_RETURN_IF_ERROR(Skip(1));
          break;
        case 0x95:  // FRAME
          CLIPSERVE_RETURN_IF_ERROR(Skip(8));
          break;
        case '.': {  // STOP
          if (stack_.empty()) return Bad("empty stack at STOP");
          return stack_.back();
        }
        case '(':
          stack_.push_back(Make(Mark{}));
          break;
        case 'N':
          stack_.push_back(Make(None{}));
          break;
        case 0x88:
          stack_.push_back(Make(true));
          break;
        case 0x89:
          stack_.push_back(Make(false));
          break;
        case '}':
          stack_.push_back(Make(Dict{}));
          break;
        case ']':
        case 0x8f:  // EMPTY_SET: kept as a list; a set never holds weights
          stack_.push_back(Make(List{}));
          break;
        case ')':
          stack_.push_back(Make(Tuple{}));
          break;
        case 'K': {
          CLIPSERVE_ASSIGN_OR_RETURN(uint64_t n, ReadUint(1));
          stack_.push_back(Make(static_cast<int64_t>(n)));
          break;
        }
        case 'M': {
          CLIPSERVE_ASSIGN_OR_RETURN(uint64_t n, ReadUint(2));
          stack_.push_back(Make(static_cast<int64_t>(n)));
          break;
        }
        case 'J': {
          CLIPSERVE_ASSIGN_OR_RETURN(uint64_t n, ReadUint(4));
          stack_.push_back(Make(static_cast<int64_t>(static_cast<int32_t>(n))));
          break;
        }
        case 0x8a:    // LONG1: little-endian two's complement of n bytes
        case 0x8b: {  // LONG4: the same with a 4-byte count
          CLIPSERVE_ASSIGN_OR_RETURN(uint64_t n, ReadUint(op == 0x8a ? 1 : 4));
          if (n > 8) {
            // Wider than 64 bits: never a size, stride or count of a tensor, but a
            // training checkpoint may hold one beside its weights (a seed, a hash).
            CLIPSERVE_RETURN_IF_ERROR(Skip(n));
            stack_.push_back(Make(Opaque{}));
            break;
          }
          CLIPSERVE_ASSIGN_OR_RETURN(uint64_t raw, ReadUint(n));
          int64_t value = static_cast<int64_t>(raw);
          if (n > 0 && n < 8 && (raw >> (8 * n - 1)) & 1) value -= int64_t{1} << (8 * n);
          stack_.push_back(Make(value));
          break;
        }
        case 'G': {  // BINFLOAT, big-endian
          CLIPSERVE_ASSIGN_OR_RETURN(absl::string_view bytes, Read(8));
          uint64_t bits = 0;
          for (char c : bytes) bits = (bits << 8) | static_cast<uint8_t>(c);
          double d;
          std::memcpy(&d, &bits, 8);
          stack_.push_back(Make(d));
          break;
        }
        case 'X':    // BINUNICODE
        case 'B':    // BINBYTES
        case 0x8c:   // SHORT_BINUNICODE
        case 'C':    // SHORT_BINBYTES
        case 'U': {  // SHORT_BINSTRING
          const int width = (op == 'X' || op == 'B') ? 4 : 1;
          CLIPSERVE_ASSIGN_OR_RETURN(uint64_t n, ReadUint(width));
          CLIPSERVE_ASSIGN_OR_RETURN(absl::string_view s, Read(n));
          stack_.push_back(Make(std::string(s)));
          break;
        }
        case 'c': {  // GLOBAL "module\nname\n"
          CLIPSERVE_ASSIGN_OR_RETURN(std::string module, ReadLine());
          CLIPSERVE_ASSIGN_OR_RETURN(std::string name, ReadLine());
          stack_.push_back(Make(Global{module, name}));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr name, Pop());
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr module, Pop());
          const auto* m = std::get_if<std::string>(&module->v);
          const auto* n = std::get_if<std::string>(&name->v);
          if (m == nullptr || n == nullptr) return Bad("STACK_GLOBAL needs two strings");
          stack_.push_back(Make(Global{*m, *n}));
          break;
        }
        case 'q':
        case 'r': {  // BINPUT, LONG_BINPUT
          CLIPSERVE_ASSIGN_OR_RETURN(uint64_t index, ReadUint(op == 'q' ? 1 : 4));
          if (stack_.empty()) return Bad("PUT on an empty stack");
          memo_[index] = stack_.back();
          break;
        }
        case 0x94:  // MEMOIZE
          if (stack_.empty()) return Bad("MEMOIZE on an empty stack");
          memo_[memo_.size()] = stack_.back();
          break;
        case 'h':
        case 'j': {  // BINGET, LONG_BINGET
          CLIPSERVE_ASSIGN_OR_RETURN(uint64_t index, ReadUint(op == 'h' ? 1 : 4));
          auto it = memo_.find(index);
          if (it == memo_.end()) return Bad("GET of an unknown memo slot");
          stack_.push_back(it->second);
          break;
        }
        case 't':     // TUPLE
        case 0x91: {  // FROZENSET: kept as a tuple
          CLIPSERVE_ASSIGN_OR_RETURN(std::vector<ValuePtr> items, PopToMark());
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr tuple, NewTuple(std::move(items)));
          stack_.push_back(std::move(tuple));
          break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1..3
          const size_t n = op - 0x84;
          if (stack_.size() < n) return Bad("TUPLEn on a short stack");
          Tuple tuple(std::vector<ValuePtr>(stack_.end() - n, stack_.end()));
          stack_.resize(stack_.size() - n);
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr value, NewTuple(std::move(tuple)));
          stack_.push_back(std::move(value));
          break;
        }
        case 's': {  // SETITEM
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr value, Pop());
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr key, Pop());
          CLIPSERVE_RETURN_IF_ERROR(SetItems({key, value}));
          break;
        }
        case 'u': {  // SETITEMS
          CLIPSERVE_ASSIGN_OR_RETURN(std::vector<ValuePtr> items, PopToMark());
          if (items.size() % 2 != 0) return Bad("SETITEMS with an odd item count");
          CLIPSERVE_RETURN_IF_ERROR(SetItems(items));
          break;
        }
        case 'a': {  // APPEND
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr value, Pop());
          CLIPSERVE_RETURN_IF_ERROR(Append({value}));
          break;
        }
        case 'e':     // APPENDS
        case 0x90: {  // ADDITEMS (to a set)
          CLIPSERVE_ASSIGN_OR_RETURN(std::vector<ValuePtr> items, PopToMark());
          CLIPSERVE_RETURN_IF_ERROR(Append(items));
          break;
        }
        case 'Q': {  // BINPERSID
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr pid, Pop());
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr storage, PersistentLoad(pid));
          stack_.push_back(storage);
          break;
        }
        case 'R': {  // REDUCE
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr args, Pop());
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr callable, Pop());
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr result, Reduce(callable, args));
          stack_.push_back(result);
          break;
        }
        case 0x81: {  // NEWOBJ: cls.__new__(cls, *args), inert but for modules
          CLIPSERVE_RETURN_IF_ERROR(Pop().status());
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr cls, Pop());
          const auto* global = std::get_if<Global>(&cls->v);
          const bool module =
              global != nullptr && (global->module == "__torch__" ||
                                    absl::StartsWith(global->module, "__torch__."));
          stack_.push_back(module ? Make(Object{}) : Make(Opaque{}));
          break;
        }
        case 'b': {  // BUILD: setstate. A module keeps a dict state as its attributes
          // (its __setstate__, if it has one, is not run); other objects drop theirs.
          CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr state, Pop());
          if (stack_.empty()) return Bad("BUILD on an empty stack");
          Value& target = *stack_.back();
          auto* object = std::get_if<Object>(&target.v);
          if (object != nullptr && object->state == nullptr &&
              std::holds_alternative<Dict>(state->v)) {
            CLIPSERVE_RETURN_IF_ERROR(Deepen(target, {state}));
            object->state = state;
          }
          break;
        }
        default:
          return Bad(
              absl::StrFormat("unsupported opcode 0x%02x at byte %d", op, pos_ - 1));
      }
    }
  }

 private:
  absl::Status Skip(size_t n) { return Read(n).status(); }

  absl::StatusOr<absl::string_view> Read(uint64_t n) {
    if (n > data_.size() - pos_) return Bad("truncated");
    absl::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }

  absl::StatusOr<uint64_t> ReadUint(uint64_t n) {
    CLIPSERVE_ASSIGN_OR_RETURN(absl::string_view bytes, Read(n));
    uint64_t value = 0;
    for (uint64_t i = 0; i < n; ++i)
      value |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
    return value;
  }

  absl::StatusOr<std::string> ReadLine() {
    const size_t end = data_.find('\n', pos_);
    if (end == absl::string_view::npos || end - pos_ > 256) return Bad("bad GLOBAL");
    std::string line(data_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return line;
  }

  absl::StatusOr<ValuePtr> Pop() {
    if (stack_.empty()) return Bad("stack underflow");
    ValuePtr out = std::move(stack_.back());
    stack_.pop_back();
    if (std::holds_alternative<Mark>(out->v)) return Bad("unexpected MARK");
    return out;
  }

  absl::StatusOr<std::vector<ValuePtr>> PopToMark() {
    for (size_t i = stack_.size(); i-- > 0;) {
      if (std::holds_alternative<Mark>(stack_[i]->v)) {
        std::vector<ValuePtr> items(stack_.begin() + i + 1, stack_.end());
        stack_.resize(i);
        return items;
      }
    }
    return Bad("no MARK");
  }

  absl::Status SetItems(const std::vector<ValuePtr>& items) {
    if (stack_.empty()) return Bad("SETITEM on an empty stack");
    auto* dict = std::get_if<Dict>(&stack_.back()->v);
    if (dict == nullptr) {
      if (std::holds_alternative<Opaque>(stack_.back()->v)) return absl::OkStatus();
      return Bad("SETITEM on a non-dict");
    }
    CLIPSERVE_RETURN_IF_ERROR(Deepen(*stack_.back(), items));
    for (size_t i = 0; i < items.size(); i += 2)
      dict->emplace_back(items[i], items[i + 1]);
    return absl::OkStatus();
  }

  absl::Status Append(const std::vector<ValuePtr>& items) {
    if (stack_.empty()) return Bad("APPEND on an empty stack");
    auto* list = std::get_if<List>(&stack_.back()->v);
    if (list == nullptr) {
      if (std::holds_alternative<Opaque>(stack_.back()->v)) return absl::OkStatus();
      return Bad("APPEND on a non-list");
    }
    CLIPSERVE_RETURN_IF_ERROR(Deepen(*stack_.back(), items));
    list->insert(list->end(), items.begin(), items.end());
    return absl::OkStatus();
  }

  // Raises `container`'s depth to hold `children` and marks them placed;
  // INVALID_ARGUMENT past kMaxNesting, for a container already placed in another, or
  // for one that would hold itself. So values form no cycles, and no chain deeper
  // than kMaxNesting.
  static absl::Status Deepen(Value& container, const std::vector<ValuePtr>& children) {
    if (container.placed)
      return Bad("a container changed after it was placed in another");
    for (const ValuePtr& child : children) {
      if (child.get() == &container) return Bad("a container placed inside itself");
      container.depth = std::max(container.depth, child->depth + 1);
    }
    if (container.depth > kMaxNesting) return Bad("values nested too deeply");
    for (const ValuePtr& child : children) child->placed = true;
    return absl::OkStatus();
  }

  // A tuple value holding `items`, its depth checked.
  static absl::StatusOr<ValuePtr> NewTuple(std::vector<ValuePtr> items) {
    ValuePtr value = Make(Tuple(items));
    CLIPSERVE_RETURN_IF_ERROR(Deepen(*value, items));
    return value;
  }

  // pid = ("storage", <torch.XStorage>, key, location, numel)
  absl::StatusOr<ValuePtr> PersistentLoad(const ValuePtr& pid) {
    const auto* tuple = std::get_if<Tuple>(&pid->v);
    if (tuple == nullptr || tuple->size() != 5)
      return Bad("persistent id is not a 5-tuple");
    const auto* tag = std::get_if<std::string>(&(*tuple)[0]->v);
    const auto* type = std::get_if<Global>(&(*tuple)[1]->v);
    const auto* key = std::get_if<std::string>(&(*tuple)[2]->v);
    const auto* numel = std::get_if<int64_t>(&(*tuple)[4]->v);
    if (tag == nullptr || *tag != "storage" || type == nullptr || key == nullptr ||
        numel == nullptr || *numel < 0) {
      return Bad("persistent id is not a storage reference");
    }
    torch::ScalarType dtype;
    if (type->module != "torch" || !StorageDtype(type->name, &dtype)) {
      return Bad(
          absl::StrCat("unsupported storage type ", type->module, ".", type->name));
    }
    auto cached = storages_.find(*key);
    if (cached != storages_.end()) return cached->second;
    CLIPSERVE_ASSIGN_OR_RETURN(torch::Tensor storage, loader_(*key, dtype, *numel));
    ValuePtr value = Make(storage);
    storages_.emplace(*key, value);
    storage_values_.emplace(value.get(), *key);
    return value;
  }

  absl::StatusOr<ValuePtr> Reduce(const ValuePtr& callable, const ValuePtr& args) {
    const auto* global = std::get_if<Global>(&callable->v);
    const auto* tuple = std::get_if<Tuple>(&args->v);
    if (global == nullptr || tuple == nullptr) return Make(Opaque{});
    if (global->module == "collections" && global->name == "OrderedDict") {
      return Make(Dict{});
    }
    if (global->module == "torch.jit._pickle" && global->name == "restore_type_tag") {
      // LibTorch's torch::pickle_save wraps a dict as restore_type_tag(dict, "Dict[..]").
      if (tuple->empty()) return Bad("restore_type_tag without a value");
      return (*tuple)[0];
    }
    if (global->module == "torch._utils" && global->name == "_rebuild_parameter") {
      if (tuple->empty()) return Bad("_rebuild_parameter without a tensor");
      return (*tuple)[0];
    }
    if (global->module == "torch._utils" && global->name == "_rebuild_tensor_v2") {
      if (tuple->size() < 4) return Bad("_rebuild_tensor_v2 needs 4+ arguments");
      const auto* storage = std::get_if<torch::Tensor>(&(*tuple)[0]->v);
      const auto* offset = std::get_if<int64_t>(&(*tuple)[1]->v);
      if (storage == nullptr || offset == nullptr)
        return Bad("bad _rebuild_tensor_v2 args");
      // A storage, never a tensor rebuilt before: torch.load refuses a view of a view,
      // whose offset would count from its storage's start, not the view's.
      const auto viewed = storage_values_.find((*tuple)[0].get());
      if (viewed == storage_values_.end()) {
        return Bad("_rebuild_tensor_v2 of a tensor, not of a storage");
      }
      // What is wrong, and with which record: the tensor's own name is not known
      // until the dict that holds it is built.
      const auto naming_storage = [&](const absl::Status& status) {
        return absl::Status(
            status.code(),
            absl::StrCat(status.message(), " (a view of storage record data/",
                         absl::CHexEscape(viewed->second), ")"));
      };
      const auto bad_view = [&](absl::string_view what) {
        return naming_storage(Bad(what));
      };
      absl::StatusOr<std::vector<int64_t>> size = IntTuple((*tuple)[2], "size");
      if (!size.ok()) return naming_storage(size.status());
      absl::StatusOr<std::vector<int64_t>> stride = IntTuple((*tuple)[3], "stride");
      if (!stride.ok()) return naming_storage(stride.status());
      if (size->size() != stride->size()) return bad_view("size and stride ranks differ");
      // The view must stay inside its storage.
      if (*offset < 0) return bad_view("negative storage offset");
      int64_t last = *offset;
      bool empty = false;
      for (size_t d = 0; d < size->size(); ++d) {
        const int64_t extent = (*size)[d], step = (*stride)[d];
        if (extent < 0 || step < 0) return bad_view("negative size or stride");
        if (extent == 0) empty = true;
        if (extent > 0 && step > 0 &&
            (extent - 1) > (std::numeric_limits<int64_t>::max() - last) / step) {
          return bad_view("tensor view overflows");
        }
        if (extent > 0) last += (extent - 1) * step;
      }
      if (!empty && last >= storage->numel()) {
        return bad_view(absl::StrCat("tensor view reaches element ", last,
                                     " of a storage of ", storage->numel()));
      }
      return Make(storage->as_strided(*size, *stride, *offset));
    }
    return Make(Opaque{});
  }

  absl::string_view data_;
  size_t pos_ = 0;
  const StorageLoader& loader_;
  std::vector<ValuePtr> stack_;
  std::unordered_map<uint64_t, ValuePtr> memo_;
  std::map<std::string, ValuePtr> storages_;
  // The values of storages_, with their keys: what _rebuild_tensor_v2 may view.
  absl::flat_hash_map<const Value*, std::string> storage_values_;
};

// Adds the tensors among `object`'s attributes to `out` as "<prefix><name>", and those
// of its submodules under "<prefix><name>.". Recursion is bounded by kMaxNesting. A
// module met twice (`visited`) is refused: a few bytes of memoized modules, each held
// twice by the next, would be walked once per path, 2^depth times. An attribute its
// state sets twice has its last value, as the Python dict the state is; a dotted name
// two paths give ("a.b" beside a submodule "a" holding "b") is refused.
absl::Status CollectModuleTensors(const Object& object, const std::string& prefix,
                                  absl::flat_hash_set<const Object*>* visited,
                                  TensorMap* out) {
  if (!visited->insert(&object).second) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed TorchScript archive: module '", prefix,
                     "' is also a submodule elsewhere"));
  }
  if (object.state == nullptr) return absl::OkStatus();
  // Each name's last value, in the order the names first came.
  std::vector<std::string> names;
  std::unordered_map<std::string, const Value*> last;
  for (const auto& [key, value] : std::get<Dict>(object.state->v)) {
    const auto* name = std::get_if<std::string>(&key->v);
    if (name == nullptr) continue;
    if (last.insert_or_assign(*name, value.get()).second) names.push_back(*name);
  }
  for (const std::string& name : names) {
    const Value* value = last.at(name);
    if (const auto* tensor = std::get_if<torch::Tensor>(&value->v)) {
      if (!out->emplace(prefix + name, *tensor).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            "malformed TorchScript archive: '", prefix, name, "' is given by two paths"));
      }
    } else if (const auto* module = std::get_if<Object>(&value->v)) {
      CLIPSERVE_RETURN_IF_ERROR(
          CollectModuleTensors(*module, absl::StrCat(prefix, name, "."), visited, out));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TensorMap> TensorsFromTorchScriptPickle(
    absl::string_view pickle, const StorageLoader& load_storage) {
  Machine machine(pickle, load_storage);
  CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr root, machine.Run());
  const auto* module = std::get_if<Object>(&root->v);
  if (module == nullptr) {
    return absl::InvalidArgumentError("TorchScript archive holds no module");
  }
  TensorMap out;
  absl::flat_hash_set<const Object*> visited;
  CLIPSERVE_RETURN_IF_ERROR(CollectModuleTensors(*module, "", &visited, &out));
  if (out.empty()) return absl::InvalidArgumentError("checkpoint holds no tensors");
  return out;
}

absl::StatusOr<TensorMap> TensorsFromTorchPickle(absl::string_view pickle,
                                                 const StorageLoader& load_storage) {
  Machine machine(pickle, load_storage);
  CLIPSERVE_ASSIGN_OR_RETURN(ValuePtr root, machine.Run());
  const Dict* dict = std::get_if<Dict>(&root->v);
  if (dict == nullptr) {
    return absl::InvalidArgumentError(
        "torch.save file holds no dict (a whole model saved with torch.save(model)? "
        "save its state_dict() instead)");
  }
  for (const auto& [key, value] : *dict) {
    const auto* name = std::get_if<std::string>(&key->v);
    const auto* inner = std::get_if<Dict>(&value->v);
    if (name != nullptr && *name == "state_dict" && inner != nullptr) {
      dict = inner;
      break;
    }
  }
  TensorMap out;
  for (const auto& [key, value] : *dict) {
    const auto* name = std::get_if<std::string>(&key->v);
    const auto* tensor = std::get_if<torch::Tensor>(&value->v);
    if (name == nullptr || tensor == nullptr) continue;
    // A key given twice keeps its last value, as in the Python dict torch.load makes.
    out.insert_or_assign(*name, *tensor);
  }
  if (out.empty()) return absl::InvalidArgumentError("checkpoint holds no tensors");
  return out;
}

}  // namespace clipserve
