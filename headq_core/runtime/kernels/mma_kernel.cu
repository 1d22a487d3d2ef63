// The entry point of the tensor-core decode kernel: one warp per split (see mma_decode.cu); the
// block's splits are merged in shared memory before anything reaches global memory.

__device__ __forceinline__ u16 to_out(float x) {  // one output element, round to nearest even
#if RES_BF16
  u32 u = __float_as_uint(x);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (u16)(u >> 16);
#else
  return (u16)(pack_half2(x, 0.0f) & 0xffffu);
#endif
}

// The block's NW splits merged in shared memory: part [NW][GQ][D] normalised outputs and
// lse [NW][GQ] log-sum-exps (base 2) -> the block's partial output and log-sum-exp (slot blockIdx.x
// of gridDim.x), or the output itself when the block is the only one.
__device__ __forceinline__ void merge_block(const float* part, const float* lse, const Params& p, int bh) {
  const int nb = gridDim.x;
  for (int i = threadIdx.x; i < GQ * (D / 4); i += NW * 32) {
    const int head = i / (D / 4), ch = 4 * (i % (D / 4));
    float m = NEG_INF;
#pragma unroll
    for (int w = 0; w < NW; ++w) m = fmaxf(m, lse[w * GQ + head]);
    const float ms = m == NEG_INF ? 0.0f : m;
    float den = 0.0f, a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float wt = ex2(lse[w * GQ + head] - ms);
      const float4 o = *(const float4*)(part + (w * GQ + head) * D + ch);
      den += wt; a0 += wt * o.x; a1 += wt * o.y; a2 += wt * o.z; a3 += wt * o.w;
    }
    const float inv = den > 0.0f ? 1.0f / den : 0.0f;
    const long long row = (long long)bh * GQ + head;
    if (nb == 1) {
      const u32 lo = (u32)to_out(a0 * inv) | ((u32)to_out(a1 * inv) << 16);
      const u32 hi = (u32)to_out(a2 * inv) | ((u32)to_out(a3 * inv) << 16);
      *(uint2*)(p.out + row * D + ch) = make_uint2(lo, hi);
    } else {
      *(float4*)(p.o_part + (row * nb + blockIdx.x) * D + ch) = make_float4(a0 * inv, a1 * inv, a2 * inv, a3 * inv);
      if (ch == 0) p.lse[row * nb + blockIdx.x] = den > 0.0f ? ms + lg2(den) : NEG_INF;
    }
  }
}

// Writes the lane's output columns (heads 8nt + 2t + e): channels 32P + 4g .. + 3 of the split's
// normalised output, and its log-sum-exp, into the warp's rows of the block's merge buffers
// part [GQ][D] and lse [GQ] (see merge_block).
__device__ __forceinline__ void finish(State& st, int g, int t, float* part, float* lse) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
#pragma unroll
      for (int x = 4; x < 32; x <<= 1) st.l[nt][e] += __shfl_xor_sync(0xffffffffu, st.l[nt][e], x);
      float zv[4];
#pragma unroll
      for (int P = 0; P < 4; ++P) zv[P] = __shfl_sync(0xffffffffu, st.z[nt][e], 4 * ((32 * P) / GV) + t);
      const int head = 8 * nt + 2 * t + e;
      if (head >= GQ) continue;
      const float l = st.l[nt][e], inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
      for (int P = 0; P < 4; ++P) {
        const float v0 = (st.o[nt][2 * P][e] + zv[P]) * inv, v1 = (st.o[nt][2 * P][e + 2] + zv[P]) * inv;
        const float v2 = (st.o[nt][2 * P + 1][e] + zv[P]) * inv, v3 = (st.o[nt][2 * P + 1][e + 2] + zv[P]) * inv;
        const int ch = 32 * P + 4 * g;
        *(float4*)(part + head * D + ch) = make_float4(v0, v1, v2, v3);
      }
      if (g == 0) lse[head] = l > 0.0f ? st.m[nt][e] + lg2(l) : NEG_INF;
    }
}

extern "C" __global__ void __launch_bounds__(NW * 32, MINB) headq_decode_mma(const Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int split = blockIdx.x * NW + warp;
  const bool active = split < p.S;  // every warp takes part in the block's merge
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  int vis = p.first;
#if ROW_START
  vis = max(vis, p.row_start[b]);
#endif
  u32 qb[NT][8][2];  // query B fragments: head 8nt + g, channels 32t + 4kk + 2e, + 1, times qk_scale
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int head = 8 * nt + g;
    const u32* src = (const u32*)(p.q + ((long long)bh * GQ + (head < GQ ? head : 0)) * D + 32 * t);
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const u32 w = src[2 * kk + e];
        const float lo = in_to_float((u16)(w & 0xffffu)) * p.qk_scale, hi = in_to_float((u16)(w >> 16)) * p.qk_scale;
        qb[nt][kk][e] = head < GQ ? pack_half2(lo, hi) : 0u;
      }
  }
  State st;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) { st.m[nt][e] = NEG_INF; st.l[nt][e] = 0.0f; }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      st.z[nt][e] = 0.0f;
#pragma unroll
      for (int m = 0; m < 8; ++m) st.o[nt][m][e] = 0.0f;
    }
  }
  if (active && split < p.n_qsplits) {
    u32 qu[NT][2] = {};  // side-code B fragments: sign * U^T q, ranks 2t, 2t+1 (+ 8), head 8nt + g
#if RANK > 0
#pragma unroll
    for (int half = 0; half < (RANK + 7) / 8; ++half) {
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const int rk = 8 * half + g;
      const float* urow = p.u + (long long)h * D * RANK + (rk < RANK ? rk : 0);
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        const int c = 32 * t + 4 * kk;
        const bool ok = rk < RANK;
        const u32 b0 = ok ? pack_half2(urow[c * RANK], urow[(c + 1) * RANK]) : 0u;
        const u32 b1 = ok ? pack_half2(urow[(c + 2) * RANK], urow[(c + 3) * RANK]) : 0u;
        mma(acc, qb[0][kk][0], NT > 1 ? qb[NT - 1][kk][0] : 0u, qb[0][kk][1], NT > 1 ? qb[NT - 1][kk][1] : 0u, b0, b1);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) qu[nt][half] = pack_half2(acc[2 * nt] * p.sign, acc[2 * nt + 1] * p.sign);
    }
#endif
    stream_chunks(p, bh, split, vis, smem + warp * (NSTAGE * STAGE_BYTES), lane,
                  [&](const unsigned char* stg, int c0, int hi) {
                    float s[4][NT][4];
                    qk_chunk(s, qb, qu, stg, g, t);
                    u32 pb[4][NT][2];
                    softmax_chunk(s, st, c0, vis, hi, g, p.cap2, pb);
#pragma unroll
                    for (int T = 0; T < 4; ++T) pv_tile(st, pb[T], stg, T, g, t);
                  });
  } else if (active) {
    const int lo = (split - p.n_qsplits) * CHUNK, hi = min(p.R, lo + CHUNK);
    if (vis - p.N < hi)
      residual_chunk(st, qb, p.kr + (long long)bh * p.s_kr, p.vr + (long long)bh * p.s_vr, lo, hi, vis - p.N, g, t,
                     p.cap2);
  }
  float* part = (float*)smem;  // the pipeline rings are done with once every warp is here
  float* lse = part + NW * GQ * D;
  __syncthreads();
  finish(st, g, t, part + warp * GQ * D, lse + warp * GQ);
  __syncthreads();
  merge_block(part, lse, p, bh);
}
