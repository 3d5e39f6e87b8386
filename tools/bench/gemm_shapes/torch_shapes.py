"""PyTorch (MKL) on gemm_shapes' shapes, and F.conv2d 3x3 at SD's 64², 32², 16² levels; 2 threads."""
import time, torch
torch.set_num_threads(2)
S=[("linear 64² qkv",4096,320,320),("ff in 64²",4096,2560,320),("ff out 64²",4096,320,1280),("conv tap 64²",320,4224,320),("conv tap 32²",640,1088,640),("conv tap 16²",1280,288,1280),("attn qk 64²",4096,4096,64),("attn pv 64²",4096,64,4096),("conv im2col 64²",320,4096,2880)]
for name,m,n,k in S:
    a=torch.rand(m,k); b=torch.rand(k,n); c=torch.empty(m,n)
    torch.mm(a,b,out=c); best=1e9
    for _ in range(5):
        t=time.perf_counter(); i=0
        while time.perf_counter()-t<0.3: torch.mm(a,b,out=c); i+=1
        best=min(best,(time.perf_counter()-t)/i)
    print(f"{name:18} torch {2*m*n*k/best/1e9:6.1f}")
# convs as PyTorch runs them
for name,c_,hw in [("conv3x3 64²",320,64),("conv3x3 32²",640,32),("conv3x3 16²",1280,16)]:
    x=torch.rand(1,c_,hw,hw); w=torch.rand(c_,c_,3,3)
    f=lambda: torch.nn.functional.conv2d(x,w,padding=1); f(); best=1e9
    for _ in range(5):
        t=time.perf_counter(); i=0
        while time.perf_counter()-t<0.3: f(); i+=1
        best=min(best,(time.perf_counter()-t)/i)
    print(f"{name:18} torch conv {2*c_*c_*9*hw*hw/best/1e9:6.1f}")
