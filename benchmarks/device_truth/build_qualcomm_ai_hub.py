import subprocess, yaml, csv, collections, os
"""Rebuilds qualcomm_ai_hub.csv and qualcomm_ai_hub_details.csv from a clone of quic/ai-hub-models.
Usage: AIHUB_REPO=/path/to/ai-hub-models python build_qualcomm_ai_hub.py"""
R=os.environ.get('AIHUB_REPO','/work/.mirror/quic+ai-hub-models/repo')  # a git clone of github.com/quic/ai-hub-models
def git(*a): return subprocess.run(['git','-C',R,*a],capture_output=True,text=True,check=True).stdout
def show(c,p):
    r=subprocess.run(['git','-C',R,'show',f'{c}:{p}'],capture_output=True,text=True)
    return r.stdout if r.returncode==0 else None
HEAD=git('rev-parse','HEAD').strip()
def full(c): return git('rev-parse',c).strip()
V037=full('660512ac')   # v0.37.0: last release with Samsung Galaxy S23 (8 Gen 2) + Snapdragon 8 Elite QRD metrics
V045=full('052dc1f3')   # v0.45.0: last release containing swin_* (removed in v0.46.0)
V042=full('8138fd0d')   # v0.42.0: last release containing deeplabv3_resnet50 (removed in v0.43.0)

TVC='(qai_hub_models ImagenetClassifier wrapper adds input normalization)'
def tv(fn, extra='', wrap=TVC):
    return f'torchvision.models.{fn}(weights=None{extra})' + (f' {wrap}' if wrap else '')
S224='1x3x224x224'
CAT={
 'convnext_base':('torchvision.models.convnext_base',tv('convnext_base'),'convnext',S224),
 'convnext_tiny':('torchvision.models.convnext_tiny',tv('convnext_tiny'),'convnext',S224),
 'densenet121':('torchvision.models.densenet121',tv('densenet121'),'densenet',S224),
 'efficientnet_b0':('torchvision.models.efficientnet_b0',tv('efficientnet_b0'),'efficientnet',S224),
 'efficientnet_b4':('torchvision.models.efficientnet_b4',tv('efficientnet_b4'),'efficientnet',S224),
 'efficientnet_v2_s':('torchvision.models.efficientnet_v2_s',tv('efficientnet_v2_s'),'efficientnet_v2',S224),
 'googlenet':('torchvision.models.googlenet',tv('googlenet',', transform_input=False','(eval mode, no aux heads; wrapper applies the transform_input normalization)'),'inception',S224),
 'inception_v3':('torchvision.models.inception_v3',tv('inception_v3',', transform_input=False','(eval mode, no aux head; wrapper applies the transform_input normalization)'),'inception',S224),
 'mnasnet05':('torchvision.models.mnasnet0_5',tv('mnasnet0_5'),'mnasnet',S224),
 'mobilenet_v2':('MobileNetV2 width 1.0 (tonylins/pytorch-mobilenet-v2; same layer structure as torchvision.models.mobilenet_v2)','torchvision.models.mobilenet_v2(weights=None) (equivalent; qai_hub_models builds tonylins/pytorch-mobilenet-v2 MobileNetV2 + input normalization)','mobilenet_v2',S224),
 'mobilenet_v3_large':('torchvision.models.mobilenet_v3_large',tv('mobilenet_v3_large'),'mobilenet_v3',S224),
 'mobilenet_v3_small':('torchvision.models.mobilenet_v3_small',tv('mobilenet_v3_small'),'mobilenet_v3',S224),
 'regnet':('torchvision.models.regnet_x_3_2gf',tv('regnet_x_3_2gf'),'regnet',S224),
 'regnet_y_800mf':('torchvision.models.regnet_y_800mf',tv('regnet_y_800mf'),'regnet',S224),
 'resnet18':('torchvision.models.resnet18',tv('resnet18'),'resnet',S224),
 'resnet50':('torchvision.models.resnet50',tv('resnet50'),'resnet',S224),
 'resnet101':('torchvision.models.resnet101',tv('resnet101'),'resnet',S224),
 'wideresnet50':('torchvision.models.wide_resnet50_2',tv('wide_resnet50_2'),'resnet',S224),
 'resnext50':('torchvision.models.resnext50_32x4d',tv('resnext50_32x4d'),'resnext',S224),
 'resnext101':('torchvision.models.resnext101_32x8d',tv('resnext101_32x8d'),'resnext',S224),
 'shufflenet_v2':('torchvision.models.shufflenet_v2_x0_5',tv('shufflenet_v2_x0_5'),'shufflenet',S224),
 'squeezenet1_1':('torchvision.models.squeezenet1_1',tv('squeezenet1_1'),'squeezenet',S224),
 'vit':('torchvision.models.vit_b_16',tv('vit_b_16'),'vit',S224),
 'swin_tiny':('torchvision.models.swin_t',tv('swin_t',wrap='(qai_hub_models swaps ShiftedWindowAttention/PatchMerging for export-friendly equivalents + input normalization)'),'swin',S224),
 'swin_small':('torchvision.models.swin_s',tv('swin_s',wrap='(qai_hub_models swaps ShiftedWindowAttention/PatchMerging for export-friendly equivalents + input normalization)'),'swin',S224),
 'swin_base':('torchvision.models.swin_b',tv('swin_b',wrap='(qai_hub_models swaps ShiftedWindowAttention/PatchMerging for export-friendly equivalents + input normalization)'),'swin',S224),
 'swinv2_base':('torchvision.models.swin_v2_b',tv('swin_v2_b',wrap='(qai_hub_models swaps PatchMerging/attention for export-friendly equivalents + input normalization)'),'swin_v2',S224),
 'fcn_resnet50':('torchvision.models.segmentation.fcn_resnet50 (21 classes, no aux head)','torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False) (wrapper: input normalization, output argmax)','fcn','1x3x520x520'),
 'deeplabv3_resnet50':('torchvision.models.segmentation.deeplabv3_resnet50 (21 classes)','torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False) (qai_hub_models built it with the aux head attached but only returns the main out branch; wrapper: input normalization, output argmax)','deeplabv3','1x3x520x520'),
 'resnet_2plus1d':('torchvision.models.video.r2plus1d_18','torchvision.models.video.r2plus1d_18(weights=None) (avgpool replaced by a simple mean; wrapper normalizes input)','video_resnet','1x3x16x112x112'),
 'resnet_3d':('torchvision.models.video.r3d_18','torchvision.models.video.r3d_18(weights=None) (avgpool replaced by a simple mean; wrapper normalizes input)','video_resnet','1x3x16x112x112'),
 'resnet_mixed':('torchvision.models.video.mc3_18','torchvision.models.video.mc3_18(weights=None) (avgpool replaced by a simple mean; wrapper normalizes input)','video_resnet','1x3x16x112x112'),
 'quicksrnetsmall':('QuickSRNetSmall (scale 4, 3 channels, 32 ch, 2 intermediate layers)','aimet-model-zoo aimet_zoo_torch/quicksrnet/model/models.py QuickSRNetBase(scaling_factor=4, num_channels=32, num_intermediate_layers=2, use_ito_connection=False) (conv3x3 stack + depth_to_space)','quicksrnet','1x3x128x128'),
 'quicksrnetmedium':('QuickSRNetMedium (scale 4, 3 channels, 32 ch, 5 intermediate layers)','aimet-model-zoo aimet_zoo_torch/quicksrnet/model/models.py QuickSRNetBase(scaling_factor=4, num_channels=32, num_intermediate_layers=5, use_ito_connection=False) (conv3x3 stack + depth_to_space)','quicksrnet','1x3x128x128'),
 'quicksrnetlarge':('QuickSRNetLarge (scale 4, 3 channels, 64 ch, 11 intermediate layers, input-to-output skip)','aimet-model-zoo aimet_zoo_torch/quicksrnet/model/models.py QuickSRNetBase(scaling_factor=4, num_channels=64, num_intermediate_layers=11, use_ito_connection=True) (conv3x3 stack + depth_to_space)','quicksrnet','1x3x128x128'),
 'xlsr':('XLSR (scale 4, 3 channels)','aimet-model-zoo aimet_zoo_torch/common/super_resolution/models.py XLSRRelease(scaling_factor=4) (grouped-conv stem + depth_to_space)','xlsr','1x3x128x128'),
 'sesr_m5':('SESR-M5 (scale 4, 16 ch, 5 linear blocks, collapsed inference form)','aimet-model-zoo aimet_zoo_torch/common/super_resolution/models.py SESRRelease(scaling_factor=4, num_channels=16, num_lblocks=5) (conv stack + depth_to_space)','sesr','1x3x128x128'),
 'esrgan':('ESRGAN RRDBNet (3->3, 64 feat, 23 RRDB blocks, gc=32, x4)','xinntao/ESRGAN RRDBNet_arch.py RRDBNet(3, 3, 64, 23, gc=32) (commit 73e9b634)','esrgan','1x3x128x128'),
 'real_esrgan_x4plus':('Real-ESRGAN x4plus = basicsr RRDBNet (3->3, 64 feat, 23 blocks, grow 32, x4)','basicsr.archs.rrdbnet_arch.RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=4) + clamp(0,1)','esrgan','1x3x128x128'),
 'real_esrgan_general_x4v3':('Real-ESRGAN general x4v3 = SRVGGNetCompact (64 feat, 32 convs, PReLU, x4)','basicsr.archs.srvgg_arch.SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4, act_type="prelu")','srvggnet','1x3x128x128'),
 'unet_segmentation':('UNet (milesial/Pytorch-UNet, n_channels=3, n_classes=2, bilinear=False)','torch.hub.load("milesial/Pytorch-UNet", "unet_carvana", pretrained=False, scale=1.0) == unet.UNet(n_channels=3, n_classes=2, bilinear=False) (short public code)','unet','1x3x640x1280'),
 'ffnet_40s':('FFNet-40S (dBBB mobile head, Cityscapes 19 classes)','Qualcomm-AI-research/FFNet model zoo entrypoint segmentation_ffnet40S_dBBB_mobile()','ffnet','1x3x1024x2048'),
 'ffnet_54s':('FFNet-54S (dBBB mobile head, Cityscapes 19 classes)','Qualcomm-AI-research/FFNet model zoo entrypoint segmentation_ffnet54S_dBBB_mobile()','ffnet','1x3x1024x2048'),
 'ffnet_78s':('FFNet-78S (dBBB mobile head, Cityscapes 19 classes)','Qualcomm-AI-research/FFNet model zoo entrypoint segmentation_ffnet78S_dBBB_mobile()','ffnet','1x3x1024x2048'),
 'ffnet_78s_lowres':('FFNet-78S (BCC mobile head, pre-downsampling, Cityscapes 19 classes)','Qualcomm-AI-research/FFNet model zoo entrypoint segmentation_ffnet78S_BCC_mobile_pre_down()','ffnet','1x3x512x1024'),
 'ffnet_122ns_lowres':('FFNet-122NS (CCC mobile head, pre-downsampling, Cityscapes 19 classes)','Qualcomm-AI-research/FFNet model zoo entrypoint segmentation_ffnet122NS_CCC_mobile_pre_down()','ffnet','1x3x512x1024'),
 'dla102x':('timm dla102x','timm.create_model("dla102x", pretrained=False) (wrapper adds input normalization)','dla',S224),
 'nasnet':('timm nasnetalarge','timm.create_model("nasnetalarge", pretrained=False) (wrapper adds input normalization; profiled at 224, not the native 331)','nasnet',S224),
 'sequencer2d':('timm sequencer2d_s','timm.create_model("sequencer2d_s", pretrained=False, num_classes=1000, in_chans=3) (wrapper adds input normalization)','sequencer',S224),
}
# chipset id -> SoC name (from qai_hub_models/devices_and_chipsets.yaml marketing names)
KEEP={'qualcomm-snapdragon-8gen2':'Snapdragon 8 Gen 2','qualcomm-snapdragon-8gen3':'Snapdragon 8 Gen 3',
      'qualcomm-snapdragon-8-elite':'Snapdragon 8 Elite','qualcomm-snapdragon-8-elite-for-galaxy':'Snapdragon 8 Elite'}
def devmap(c):
    t=show(c,'qai_hub_models/devices_and_chipsets.yaml'); y=yaml.safe_load(t)
    out={}
    for dev,d in y['devices'].items():
        if d.get('form_factor')=='Phone' and d.get('chipset') in KEEP: out[dev]=(KEEP[d['chipset']],d['chipset'])
    return out, y['scorecard_path_to_website_runtime']
# which (commit, device) pairs feed which models
PLAN=[]  # (commit, devices set)
HEAD_DEVS={'Samsung Galaxy S24','Samsung Galaxy S25'}
OLD_DEVS={'Samsung Galaxy S23','Snapdragon 8 Elite QRD'}
rows=[]; details=[]; skipped=collections.Counter(); seen=set()
def harvest(m,c,devs):
    t=show(c,f'qai_hub_models/models/{m}/perf.yaml')
    if t is None: return False
    dm,rtmap=devmap(c)
    y=yaml.safe_load(t)
    arch,rebuild,fam,shape=CAT[m]
    for prec,pd in (y.get('precisions') or {}).items():
        for comp,cd in pd['components'].items():
            for dev,rd in (cd.get('performance_metrics') or {}).items():
                if dev not in devs: continue
                if dev not in dm: skipped[('unmapped',dev)]+=1; continue
                soc,chip=dm[dev]
                for rt,md in rd.items():
                    if md.get('job_status')!='Passed': skipped[('not passed',m,dev,rt)]+=1; continue
                    nrt=rtmap.get(rt,rt)
                    if 'inference_time_milliseconds' in md: ms=float(md['inference_time_milliseconds'])
                    elif 'inference_time' in md: ms=float(md['inference_time'])/1000.0
                    else: skipped[('no time',m)]+=1; continue
                    key=(m,dev,nrt,prec)
                    if key in seen: skipped[('dup',m,dev,rt)]+=1; continue
                    seen.add(key)
                    pm=md.get('estimated_peak_memory_range_mb') or {}
                    pmax=pm.get('max','')
                    if pmax=='' and 'estimated_peak_memory_range' in md: pmax=md['estimated_peak_memory_range'].get('max',0)/2**20
                    url=f'https://github.com/quic/ai-hub-models/blob/{c}/qai_hub_models/models/{m}/perf.yaml'
                    rows.append(dict(model_id=m,architecture=arch,rebuild=rebuild,family=fam,device=dev,soc=soc,runtime=nrt,precision=prec,
                        input_shape=shape,latency_ms=f'{ms:.3f}',peak_memory_mb=pmax,source_url=url,source_commit=c))
                    lc=md.get('layer_counts') or {}
                    details.append(dict(model_id=m,device=dev,chipset=chip,runtime=nrt,yaml_runtime=rt,precision=prec,component=comp,
                        primary_compute_unit=md.get('primary_compute_unit',''),layers_total=lc.get('total',''),layers_npu=lc.get('npu',''),
                        layers_gpu=lc.get('gpu',''),layers_cpu=lc.get('cpu',''),peak_memory_min_mb=pm.get('min',''),job_id=md.get('job_id',''),
                        tool_versions=';'.join(f'{k}={v}' for k,v in (md.get('tool_versions') or {}).items()),source_commit=c))
    return True
for m in CAT:
    # newest snapshot for 8 Gen 3 / 8 Elite (S24 / S25)
    for c in (HEAD,V045,V042):
        if harvest(m,c,HEAD_DEVS): break
    else: skipped[('no newer snapshot',m)]+=1
    # 8 Gen 2 (S23) + 8 Elite QRD only exist up to v0.37.0
    if not harvest(m,V037,OLD_DEVS): skipped[('absent at v0.37.0',m)]+=1
cols='model_id,architecture,rebuild,family,device,soc,runtime,precision,input_shape,latency_ms,peak_memory_mb,source_url,source_commit'.split(',')
out=os.path.dirname(os.path.abspath(__file__)); os.makedirs(out,exist_ok=True)
order={'Snapdragon 8 Gen 2':0,'Snapdragon 8 Gen 3':1,'Snapdragon 8 Elite':2}
rows.sort(key=lambda r:(r['family'],r['model_id'],order[r['soc']],r['device'],r['runtime'],r['precision']))
with open(f'{out}/qualcomm_ai_hub.csv','w',newline='') as f:
    w=csv.DictWriter(f,fieldnames=cols); w.writeheader(); w.writerows(rows)
details.sort(key=lambda r:(r['model_id'],r['device'],r['runtime'],r['precision']))
with open(f'{out}/qualcomm_ai_hub_details.csv','w',newline='') as f:
    w=csv.DictWriter(f,fieldnames=list(details[0])); w.writeheader(); w.writerows(details)
print('rows',len(rows)); 
for k,v in sorted(skipped.items(),key=str): print('SKIP',k,v)
print(HEAD,V037,V045,V042)
