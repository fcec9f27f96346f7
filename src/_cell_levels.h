/* _cell_impl.h for one element type at every level: the portable build, then
 * (with SIMD) AVX2+FMA and AVX-512. Included by _simd.h once per type, with
 * SCALAR, SCALAR_IS_DOUBLE and CELL_TYPE (the name tag, f32 or f64) defined. */
#define CELL_SFX_(type, level) type##_##level
#define CELL_SFX(type, level) CELL_SFX_(type, level)

#define SFX CELL_SFX(CELL_TYPE, portable)
#include "_cell_impl.h"
#undef SFX
#if PYLSTM_HAVE_SIMD
#define SFX CELL_SFX(CELL_TYPE, avx2)
#define TARGET "avx2,fma"
#include "_cell_impl.h"
#undef SFX
#undef TARGET
#define SFX CELL_SFX(CELL_TYPE, avx512)
#define TARGET "avx512f,avx512dq,avx512vl,avx2,fma"
#include "_cell_impl.h"
#undef SFX
#undef TARGET
#endif

#undef CELL_SFX
#undef CELL_SFX_
